"""What the fork server imports by default besides torch: the Hugging Face classes that the
built-in causal-LM handler (and most users' handlers) use.

``transformers`` is a lazy module: ``import transformers`` costs little and the real imports
(modeling utilities, the tokenizers, a model family's modeling file) happen on first use, in
``initialize``: several seconds of every cold start of the built-in handler
(benchmarks/RESULTS.md). Touching the names here does them once, in the fork server. Nothing
here initialises CUDA (the fork server checks), and no user code is imported.
"""
import torch.distributed.pipelining  # noqa: F401  (the built-in handler's pp path)
import transformers
from safetensors import torch as _safetensors_torch  # noqa: F401

for _name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "GenerationConfig",
              "PreTrainedModel", "PreTrainedTokenizerFast", "LlamaForCausalLM", "GPT2LMHeadModel"):
    getattr(transformers, _name)
