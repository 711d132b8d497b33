"""SeqIO task and mixture registrations; `import tasks` registers them all.

Registration is idempotent (names already registered are skipped) and never reads data or
vocabulary files, except P3, whose task names come from the folders of $PROMPT_TUNING_P3_DIR
when that variable is set. See README.md in this folder for the names.
"""
from tasks import fewshot
from tasks import glue
from tasks import lm_adaptation
from tasks import mrqa
from tasks import natural_questions
from tasks import p3
from tasks import spot
from tasks import super_glue
from tasks import wmt
