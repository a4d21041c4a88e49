import os

import pytest
import torch

# CI has no GPU: Triton kernels run under the interpreter there. Must precede any triton import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# References are compared in true fp32: cuDNN's default TF32 convs are ~1e-4 off.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

from peft import LoraConfig  # noqa: E402
from transformers import LlamaConfig, Qwen2Config  # noqa: E402

from dnd_fast.layout import ALL_MODULES, qwen05_model_config  # noqa: E402


def tiny_config(family: str):
    """2 layers, hidden 64: random-weight test models built in code, no downloads."""
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family)).eval()


def lora_config(r=8, modules=ALL_MODULES):
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(modules),
                      task_type="CAUSAL_LM")


def qwen05_config():
    return qwen05_model_config()


def random_lora_state_dict(layout, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02 + 0.003).to(device=device, dtype=dtype)
            for k, s in layout.tensors}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the lent GPU)")


def reseed():
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = torch.seed() % 2**31
    torch.manual_seed(seed)
    print(f"seed={seed}")
    return seed


CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from dnd_fast.models import resolve_encoder

    return AutoTokenizer.from_pretrained(resolve_encoder(None))


def tiny_base_dir(path, family: str = "llama", seed: int = 0):
    """A random-weight causal LM with a (MiniLM WordPiece) tokenizer and a chat template, saved to ``path``."""
    from transformers import AutoModelForCausalLM

    tok = _minilm_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = "[SEP]"
    config = tiny_config(family)
    config.vocab_size = len(tok)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_encoder_dir(path, seed: int = 0):
    """A random-weight 1-layer BERT (hidden 32) with MiniLM's tokenizer, saved to ``path``."""
    from transformers import BertConfig, BertModel

    tok = _minilm_tokenizer()
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def synthetic_tasks(root, n_items: int = 24):
    """Two small multiple-choice tasks in the data format (files NAME_train.json / NAME_test.json)."""
    import json
    import random

    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, words in (("colors", ["red", "blue", "green", "yellow"]), ("animals", ["cat", "dog", "owl", "fox"])):
        for split in ("train", "test"):
            items = []
            for i in range(n_items):
                gold = rng.randrange(4)
                opts = "\n".join(f"{'ABCD'[j]}: {w}" for j, w in enumerate(rng.sample(words, 4)))
                items.append({"prompt": f"{name} question {i}: which one?\n{opts}", "response": f"[{'ABCD'[gold]}]",
                              "system": "answer with a letter"})
            (root / f"{name}_{split}.json").write_text(json.dumps(items))
    return root


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    return tiny_base_dir(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    return tiny_encoder_dir(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory):
    return synthetic_tasks(tmp_path_factory.mktemp("tasks"))


def random_generator(base_dir, encoder_dir, *, num_prompts=3, max_length=8, seed=0):
    """An untrained generator for ``base_dir``'s LoRA layout (std 0.01 stats, so its LoRAs are not zero)."""
    from transformers import AutoConfig

    from dnd_fast import DecoderConfig, Generator, HyperConvDecoder, LoRALayout, PromptEncoder

    config = lora_config()
    layout = LoRALayout.from_config(AutoConfig.from_pretrained(base_dir), config)
    encoder = PromptEncoder(str(encoder_dir), max_length=max_length, num_prompts=num_prompts)
    torch.manual_seed(seed)
    decoder = HyperConvDecoder(DecoderConfig.for_layout(layout, encoder.condition_shape, num_layers=2, kernel_size=3,
                                                        max_channels=8))
    stats = torch.stack([torch.zeros(layout.num_tokens), torch.full((layout.num_tokens,), 0.01)], -1)
    return Generator(encoder, decoder, layout, stats, str(base_dir), config).for_inference("cpu")


@pytest.fixture(autouse=True)
def _heuristic_plane_tiles(monkeypatch):
    """Tests run the plane conv on its heuristic tiles: the first-call timing would compile and time
    every candidate tiling of every test shape. test_hyperconv checks the timing path itself."""
    from dnd_fast.kernels import hyperconv

    monkeypatch.setattr(hyperconv.tuning, "TUNE", False)
    monkeypatch.setattr(hyperconv.tuning, "KNOWN", False)
