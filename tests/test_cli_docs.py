"""completions/ and man/s5vh.1 are generated from the Typer app; this fails when they are stale."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_cli_docs_are_fresh():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr


def test_bash_completion_is_valid_bash():
    p = subprocess.run(["bash", "-n", str(ROOT / "completions" / "s5vh.bash")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_bash_completion_completes_subcommands_and_options():
    script = ROOT / "completions" / "s5vh.bash"
    probe = (f"source {script}; COMP_WORDS=(s5vh tr); COMP_CWORD=1; _s5vh; echo ${{COMPREPLY[@]}}; "
             f"COMP_WORDS=(s5vh info --js); COMP_CWORD=2; _s5vh; echo ${{COMPREPLY[@]}}")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout.splitlines()
    assert "train" in out[0].split()
    assert out[1].split() == ["--json"]


def test_cli_errors_are_one_line_and_exit_2():
    p = subprocess.run([sys.executable, "-m", "s5vh_cli", "info", "--device", "tpu"], capture_output=True, text=True)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_error_text_with_brackets_is_printed_verbatim():
    # rich would read "[x]" as markup and drop it; user text must never be interpreted
    p = subprocess.run([sys.executable, "-m", "s5vh_cli", "info", "--device", "gpu[x]"], capture_output=True, text=True)
    assert p.returncode == 2 and "'gpu[x]'" in p.stderr


@pytest.mark.parametrize("shell,flag,name", [("zsh", "-n", "_s5vh"), ("fish", "-n", "s5vh.fish")])
def test_zsh_and_fish_completions_parse(shell, flag, name):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    p = subprocess.run([shell, flag, str(ROOT / "completions" / name)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_fish_completion_offers_subcommands_and_options():
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    script = ROOT / "completions" / "s5vh.fish"
    out = subprocess.run(["fish", "-c", f"source {script}; complete -C 's5vh tr'; complete -C 's5vh query --to'"],
                         capture_output=True, text=True).stdout
    assert "train" in out and "--topk" in out


def test_pip_install_puts_the_man_page_where_man_looks(tmp_path):
    """The wheel carries man/s5vh.1 as data under share/man/man1, so `pip install .` installs it into the
    environment's prefix: man-db searches PREFIX/share/man for every PREFIX/bin on PATH."""
    import zipfile

    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    wheel = next(tmp_path.glob("s5vh-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith("share/man/man1/s5vh.1")]
        assert names and z.read(names[0]).decode() == (ROOT / "man" / "s5vh.1").read_text()
        assert ".SH EXAMPLES" in z.read(names[0]).decode()


def test_readme_states_the_demo_clip_count():
    import re

    import typer

    from s5vh_cli.cli import app

    demo = typer.main.get_command(app).commands["demo"]
    per_class = next(p.default for p in demo.params if p.name == "per_class")
    said = re.search(r"shapes \((\d+) per class", (ROOT / "README.md").read_text())
    assert said and int(said.group(1)) == per_class
