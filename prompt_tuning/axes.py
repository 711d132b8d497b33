"""Logical axis names, in one place.

Every parameter and every constrained activation in the project names its axes with these
constants; `prompt_tuning.engine.partitioning` maps them to mesh axes. Importing a constant
instead of typing a string turns a typo into an ImportError rather than a silently replicated
tensor. Names follow T5X's example network, so its partitioning rules read the same here.
"""

# Activations.
BATCH = "batch"
LENGTH = "length"
KV_LENGTH = "kv_length"  # key/value length in cached attention

# Parameters (and the activations that share their dimensions).
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"  # per-head feature dimension
JOINED_KV = "joined_kv"  # heads x kv flattened, as T5X stores attention kernels
RELPOS_BUCKETS = "relpos_buckets"
ABS_POS = "abs_pos"  # learned absolute position table rows
STACK = "layers"  # the stacked-layer axis when layers are scanned

# Prompts: their own names so a prompt can be replicated (the default) or sharded on its own.
PROMPT_LENGTH = "prompt_length"
PROMPT_EMBED = "prompt_embed"
PROMPT_TABLE = "prompts"  # K prompts in a per-example prompt table
