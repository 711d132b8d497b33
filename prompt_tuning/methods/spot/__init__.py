"""SPoT: soft prompt transfer (Vu et al., 2022) — prompts as task embeddings.

`similarity` compares prompts, `library` keeps trained source prompts in a folder with a
manifest, `retrieval` picks sources for a target prompt and builds the transfer initialisers.
See README.md in this folder.
"""
