"""Model names as Ollama resolves them: one spelling per installed model, and which names run on ollama.com."""

from __future__ import annotations

DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "library/")


def canonical(name: str) -> str:
    """The one spelling of the model Ollama would run for `name`.

    Ollama trims the name, matches it without regard to case, fills in its default registry and
    namespace and the tag `latest`, and reads a `:local` suffix as "this machine's model". Two
    names with the same canonical form are the same model to Ollama, so an allow-list and usage
    rows compare these, and no spelling of an allowed model is refused or counted apart.
    """
    name = name.strip().lower()
    if name.endswith(":local"):
        name = name[: -len(":local")]
    for prefix in DEFAULT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name if _has_tag(name) else name + ":latest"


def is_cloud(name: str) -> bool:
    """True for names a signed-in Ollama sends to ollama.com: a last tag of `cloud` or ending `-cloud`.

    Same rule as Ollama's own (internal/modelref): `gpt-oss:120b-cloud`, `gpt-oss:20b:cloud`,
    `deepseek-v3.1:671b-CLOUD` are cloud models; `my-cloud` (no tag) and `cloud/x` are not.
    """
    name = name.strip()
    if ":" not in name:
        return False
    tag = name.rsplit(":", 1)[1].strip()
    return tag.lower() == "cloud" or ("/" not in tag and tag.lower().endswith("-cloud"))


def _has_tag(name: str) -> bool:
    # A colon before the last slash belongs to a registry host ("host:5000/model"), not a tag.
    return name.rfind(":") > name.rfind("/")
