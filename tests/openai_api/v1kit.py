"""What the /v1 tests share: the tiny model's name, a prompt, a model folder without a chat template."""
import json
import os

MODEL = "tiny"
PROMPT = "Once upon a time"


def without_chat_template(model_dir) -> None:
    """Make a tiny model folder's tokenizer one that has no chat template."""
    config_path = os.path.join(model_dir, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.pop("chat_template", None)
    with open(config_path, "w") as f:
        json.dump(config, f)
    for name in ("chat_template.jinja", "chat_template.json"):
        if os.path.exists(os.path.join(model_dir, name)):
            os.remove(os.path.join(model_dir, name))
