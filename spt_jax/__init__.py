"""spt_jax: Semi-Parametric Prompt Tuning (SPT) for T5 in JAX/Flax."""
import os as _os

# TensorFlow's C++ log level as the user set it (None: not set), read before any imported
# library sets its own default; `spt_jax.logs.quiet_libraries` respects the user's choice.
USER_TF_CPP_MIN_LOG_LEVEL = _os.environ.get('TF_CPP_MIN_LOG_LEVEL')
