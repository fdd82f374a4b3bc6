"""`cmake --install` gives a prefix that a cluster can use: moved to another directory and run with a
bare environment, the launcher finds LibTorch (the torch wheel) and the bundled libraries, and the
installed binary computes what the build tree's does; without LibTorch it says how to point at it."""
import os
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import BINARY, ROOT
from test_train_e2e import workspace  # noqa: F401 (a fixture)

BUILD = Path(os.environ.get("LOGITFUSE_BUILD_DIR", BINARY.parent.parent))


def test_an_installed_prefix_runs_after_a_move(workspace, tmp_path):
    assert (BUILD / "cmake_install.cmake").exists(), f"{BUILD} is not a configured build directory"
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(tmp_path / "prefix")], check=True,
                   capture_output=True)
    moved = tmp_path / "elsewhere" / "logitfuse"
    moved.parent.mkdir()
    shutil.move(tmp_path / "prefix", moved)
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(moved / "bin" / "logitfuse"), "version"], capture_output=True, text=True, env=bare)
    assert proc.returncode == 0, proc.stderr
    assert f"LibTorch {torch.__version__.split('+')[0]}" in proc.stdout

    (tmp_path / "ids.jsonl").write_text("[1, 2, 3, 4]\n[5, 6]\n")
    outputs = {}
    for name, binary in (("installed", moved / "bin" / "logitfuse"), ("build", BINARY)):
        proc = subprocess.run([str(binary), "logits", "--model", str(workspace / "student"), "--input",
                               str(tmp_path / "ids.jsonl"), "--out", str(tmp_path / f"{name}.safetensors")],
                              capture_output=True, text=True, env={**bare, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        outputs[name] = load_file(str(tmp_path / f"{name}.safetensors"))
    assert all(torch.equal(outputs["installed"][k], outputs["build"][k]) for k in outputs["build"])

    # LibTorch named explicitly (another machine's wheel location), and not found at all.
    torch_lib = Path(torch.__file__).parent / "lib"
    proc = subprocess.run([str(moved / "bin" / "logitfuse"), "version"], capture_output=True, text=True,
                          env={**bare, "LOGITFUSE_TORCH_LIB": str(torch_lib)})
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(moved / "bin" / "logitfuse"), "version"], capture_output=True, text=True,
                          env={**bare, "LOGITFUSE_TORCH_LIB": str(tmp_path / "nowhere")})
    assert proc.returncode == 2 and "LOGITFUSE_TORCH_LIB" in proc.stderr, proc.stderr


def test_version_names_the_cpu_kernels_libtorch_dispatches_to():
    """Trained weights depend on the instruction set LibTorch's CPU kernels use (the demo's figures
    moved with the machine), so `version` says which: the same as torch itself reports, and the
    override LibTorch honours (ATEN_CPU_CAPABILITY) shows in it."""
    def kernels(env):
        out = subprocess.run([str(BINARY), "version"], capture_output=True, text=True, env=env, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("CPU "))
        return line.rsplit("ATen CPU kernels ", 1)[1]

    assert kernels(dict(os.environ)) == torch.backends.cpu.get_cpu_capability()
    assert kernels({**os.environ, "ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"
