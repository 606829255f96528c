"""Chat messages -> one prompt: the model's own chat template where it ships one, else a plain one.

The template is looked up beside ``tokenizer.json`` the way transformers saves it: ``chat_template.jinja``,
``chat_template.json`` (``{"chat_template": ...}``) or the ``chat_template`` entry of
``tokenizer_config.json`` (a string, or a list of named templates: ``default`` is used). It is rendered
with jinja2's sandbox under the conventions of transformers' ``apply_chat_template``
(``messages``, ``add_generation_prompt=True``, ``bos_token``, ``eos_token``, ``raise_exception``,
``strftime_now``; trimmed blocks).

Without one (the bundled tiny model is a base model) the plain template is::

    system: You are terse.
    user: Hello
    assistant:

one ``role: content`` line per message, then ``assistant:``; generation also stops at ``"\\nuser:"`` so
the model does not write the user's next turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

PLAIN_STOPS = ("\nuser:",)


@dataclass
class ChatTemplate:
    source: str | None = None            # the jinja template; None: the plain template
    bos_token: str = ""
    eos_token: str = ""
    origin: str = "plain"                # where the template came from, for the startup line
    stops: tuple[str, ...] = field(default=())
    _compiled: object = field(default=None, repr=False)

    @classmethod
    def plain(cls) -> "ChatTemplate":
        return cls(stops=PLAIN_STOPS)

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ChatTemplate":
        d = Path(directory)
        cfg = _read_json(d / "tokenizer_config.json")
        tokens = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token")}
        source, origin = None, None
        if (d / "chat_template.jinja").is_file():
            source, origin = (d / "chat_template.jinja").read_text(encoding="utf-8"), "chat_template.jinja"
        elif isinstance(_read_json(d / "chat_template.json").get("chat_template"), str):
            source, origin = _read_json(d / "chat_template.json")["chat_template"], "chat_template.json"
        elif cfg.get("chat_template") is not None:
            source, origin = _named(cfg["chat_template"], d / "tokenizer_config.json"), "tokenizer_config.json"
        if source is None:
            return cls(stops=PLAIN_STOPS, bos_token=tokens["bos_token"], eos_token=tokens["eos_token"])
        t = cls(source, origin=f"{d / origin}", **tokens)
        t._compile()
        return t

    def _compile(self) -> None:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        try:
            self._compiled = env.from_string(self.source)
        except TemplateError as e:
            raise ValueError(f"{self.origin}: the chat template does not compile: {e}") from None

    def render(self, messages: list[dict]) -> str:
        """The prompt text; a message the template refuses raises ValueError (the request's fault)."""
        if self._compiled is None:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        from jinja2 import TemplateError

        try:
            return self._compiled.render(messages=messages, add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"the model's chat template refused the messages: {e}") from None

    def writes_bos(self, text: str) -> bool:
        """Whether the rendered ``text`` starts with BOS already (the tokenizer must not add another)."""
        return bool(self._compiled is not None and self.bos_token and text.startswith(self.bos_token))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return d if isinstance(d, dict) else {}


def _token_text(tok) -> str:
    if isinstance(tok, dict):
        tok = tok.get("content")
    return tok if isinstance(tok, str) else ""


def _named(value, path: Path) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(f"{path}: chat_template is neither a string nor a list holding a 'default' template")
