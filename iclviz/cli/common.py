"""What every subcommand shares: the progress bar, loading and checking the model, prompt A from the
command line, and writing outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..prompt import PromptError
from ..validation import atomic_write
from .options import validate_against_model, validate_args


class ProgressBar:
    """A tqdm progress callback for the library's ``progress(done, total, note)``."""

    def __init__(self, desc: str):
        self.bar = None
        self.desc = desc

    def __call__(self, done, total, note=""):
        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False)
        self.bar.n = done
        self.bar.set_postfix_str(str(note)[:40])
        self.bar.refresh()
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()



def load_model_of(args):
    from ..engine.models import load_model

    bar = ProgressBar("loading model")
    try:
        return load_model(args.model, device=args.device if hasattr(args, "device") else None,
                          dtype=getattr(args, "dtype", None), trust_remote_code=getattr(args, "trust_remote_code",
                                                                                       False),
                          device_map=getattr(args, "device_map", None),
                          offload_folder=getattr(args, "offload_folder", None),
                          progress=lambda f, msg: bar(int(f * 100), 100, msg))
    finally:
        bar.close()



def write_output(args, name: str, df=None, obj=None):
    if df is not None:
        print(df.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    elif obj is not None:
        from ..outputs.lesson_file import json_safe

        obj = json_safe(obj)
        print(json.dumps(obj, indent=2, allow_nan=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if df is not None:
            atomic_write(out / f"{name}.csv", df.to_csv(index=False))
        if obj is not None:
            atomic_write(out / f"{name}.json", json.dumps(obj, indent=2, allow_nan=False))
        print(f"wrote {out}/{name}.*", file=sys.stderr)



def save_json(args, name: str, obj) -> None:
    """Write ``obj`` as ``--out/name.json`` (nothing without --out; the table went to stdout)."""
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from ..outputs.lesson_file import json_safe

        atomic_write(out / f"{name}.json", json.dumps(json_safe(obj), indent=2, allow_nan=False))



def checked_model(args):
    """Validate what needs no model, load it, then validate against it."""
    validate_args(args)
    lm = load_model_of(args)
    print(f"model: {lm.describe()}", file=sys.stderr)
    validate_against_model(args, lm)
    return lm


# ---------------------------------------------------------------- the views on one prompt

def prompt_spec(args):
    """Prompt A as data (demonstrations, query, label words, template) from --demo/--query."""
    from ..analyses.compare import PromptSpec

    demos = []
    for d in args.demo:
        if "=" not in d:
            raise PromptError(f"write each demonstration as 'sentence=label'; got {d!r}")
        text, label = d.rsplit("=", 1)
        demos.append((text.strip(), label.strip()))
    words = tuple(args.labels) if args.labels else tuple(dict.fromkeys(lab for _, lab in demos))
    if len(words) < 2:
        raise PromptError("give demonstrations of at least two labels, or name the label words with --labels")
    return PromptSpec(tuple(demos), args.query, words, args.template)
