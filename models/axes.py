"""Logical axis names used by every model parameter and activation.

Models only *name* axes; a rule table (see `kfac_mem/configs/mesh/*.yaml`) maps these names to
mesh axes. A name missing from the rules is replicated.
"""

# Parameter axes.
EMBED = "embed"  # model width d_model
MLP = "mlp"  # MLP hidden width
Q_HEADS = "q_heads"  # num_heads * head_dim (merged)
KV_HEADS = "kv_heads"  # num_kv_heads * head_dim (merged)
VOCAB = "vocab"
NORM = "norm"  # norm scales (normally replicated)
CLASSES = "classes"  # classifier outputs (vision)
PATCH = "patch"  # flattened patch pixels (vision)

# Activation axes.
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"

# Stacked curvature factors [n_matrices, d, d]: the stack axis is sharded, each matrix stays whole.
FACTOR_STACK = "factor_stack"
# Rows of one accumulating factor [d, d] (sharded across devices during collection).
FACTOR_ROWS = "factor_rows"
