"""Entry points and scripts as users run them: MindSpore's C++ warnings (GLOG_v) are off unless asked for."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

ROOT = tiny_run.ROOT
SIDE_EFFECT = "Some side effect nodes were eliminated by mistake"   # a MindSpore compiler warning on our graphs


def user_env(**extra):
    """The environment of a user who has not set GLOG_v (tiny_run.env sets it for the other tests)."""
    env = tiny_run.env()
    env.pop("GLOG_v")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_run.make_workspace(str(tmp_path_factory.mktemp("entry_ws")))


def test_mindspore_warnings_are_off_by_default_and_back_with_glog_v_2(ws, tmp_path):
    """A 2-step teacher fine-tune: MindSpore's compiler prints `Some side effect nodes were eliminated by mistake`
    on its graph at GLOG_v=2 (warnings); the entry script makes the default 3 (errors only), the run's own lines
    stay."""
    runs = {}
    for name, env in (("default", user_env()), ("warnings", user_env(GLOG_v="2"))):
        out = str(tmp_path / name)
        args = tiny_run.finetune_args(ws, out, epochs=1, **{"finetune.max_steps": 2})
        res = subprocess.run([sys.executable, os.path.join(ROOT, "run_task_distill.py"), *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = res.stdout + res.stderr
    assert SIDE_EFFECT not in runs["default"]
    assert "The best acc is" in runs["default"] and "training done: 2 steps" in runs["default"]
    assert SIDE_EFFECT in runs["warnings"]


def fake_python(tmp_path):
    """A stand-in PYTHON (and msrun beside it) that records its GLOG_v and arguments, one line per call."""
    log = tmp_path / "calls.txt"
    for name in ("python", "msrun"):
        exe = tmp_path / name
        exe.write_text(f'#!/usr/bin/env bash\necho "{name} GLOG_v=${{GLOG_v:-unset}} $*" >> "{log}"\n')
        exe.chmod(0o755)
    return str(tmp_path / "python"), log


@pytest.mark.parametrize("user_value, seen", [(None, "3"), ("2", "2")])
def test_scripts_default_glog_v_to_3_unless_set(tmp_path, user_value, seen):
    python, log = fake_python(tmp_path)
    env = user_env(PYTHON=python, **({"GLOG_v": user_value} if user_value else {}))
    res = subprocess.run(["bash", "scripts/run_standalone_gd.sh", "configs/gd.yaml", "--train.max_steps", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == [f"python GLOG_v={seen} run_general_distill.py --config_path "
                                            f"configs/gd.yaml --train.max_steps 1"]


ENTRY_POINTS = ["run_general_distill.py", "run_task_distill.py", "run_ternary.py", "run_ofa_width.py", "export.py",
                "run_eval_onnx.py", "tools/convert_checkpoint.py", "tools/demo_report.py", "tools/pack_ternary.py",
                "tools/prepare_data.py", "tools/slice_width.py", "tools/augment_data.py"]


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_entry_point_sets_glog_v_before_mindspore(script, tmp_path):
    """Importing the entry point (what runs before main) sets GLOG_v=3 when unset and leaves a user's value; one
    that imports MindSpore at module level (its C++ log level is read then) sets it before its src imports."""
    code = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('entry', sys.argv[1]); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "print(os.environ.get('GLOG_v'), 'mindspore' in sys.modules)")
    for env, seen in ((user_env(), "3"), (user_env(GLOG_v="1"), "1")):
        res = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, script)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        value, imported = res.stdout.split()
        assert value == seen
        if imported == "True":                         # imported at module level: it must come after the line
            src = open(os.path.join(ROOT, script), encoding="utf-8").read()
            assert src.index('os.environ.setdefault("GLOG_v", "3")') < src.index("\nfrom src.")


MSRUN = ("msrun GLOG_v=3 --worker_num={n} --local_worker_num={n} --master_addr=127.0.0.1 --master_port=8118 "
         "--log_dir={log} --join=True --cluster_time_out=600 {script} --config_path {config} --distributed true "
         "--device_target CPU --threads 1")


@pytest.mark.parametrize("wrapper, args, calls", [
    ("run_distributed_gd_cpu.sh", ["--train.max_steps", "5"],
     [dict(n=2, script="run_general_distill.py", config="configs/gd.yaml", rest="--train.max_steps 5")]),
    ("run_distributed_ternary_cpu.sh", ["3", "configs/ternary_mr.yaml", "--train.epochs", "2"],
     [dict(n=3, script="run_ternary.py", config="configs/ternary_mr.yaml", rest="--train.epochs 2")]),
    ("run_distributed_ofa_cpu.sh", [], [dict(n=2, script="run_ofa_width.py", config="configs/ofa_mr.yaml", rest="")]),
    ("run_distributed_td_cpu.sh", ["2", "--phase", "finetune"],
     [dict(n=2, script="run_task_distill.py", config="configs/td_mr.yaml", rest="--phase finetune")]),
    ("run_distributed_td_cpu.sh", ["2", "--td1.max_steps", "3"],
     [dict(n=2, script="run_task_distill.py", config="configs/td_mr.yaml", rest="--td1.max_steps 3 --phase td1",
           log="output/msrun_log_td1"),
      dict(n=2, script="run_task_distill.py", config="configs/td_mr.yaml", rest="--td1.max_steps 3 --phase td2",
           log="output/msrun_log_td2")]),
])
def test_msrun_wrappers_launch_their_entry_script(tmp_path, wrapper, args, calls):
    """run_distributed_{gd,ternary,ofa,td}_cpu.sh all go through scripts/msrun_cpu.sh: a stand-in msrun (found
    beside PYTHON, as msrun_cpu.sh puts PYTHON's folder first on PATH) records the command line."""
    python, log = fake_python(tmp_path)
    env = user_env(PYTHON=python)
    for k in ("WORKER_NUM", "MASTER_PORT", "LOG_DIR", "THREADS"):
        env.pop(k, None)
    res = subprocess.run(["bash", f"scripts/{wrapper}", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    expected = [(MSRUN.format(**{"log": "output/msrun_log", **c}) + " " + c["rest"]).rstrip() for c in calls]
    assert log.read_text().splitlines() == expected


@pytest.mark.parametrize("env_extra, args, message", [
    ({}, ["configs/gd.yaml"], "ERROR: SCRIPT: set the entry script to launch"),
    ({"SCRIPT": "run_nothing.py"}, ["configs/gd.yaml"], "ERROR: SCRIPT 'run_nothing.py' does not exist"),
    ({"SCRIPT": "run_ternary.py"}, [], "ERROR: CONFIG: give the config file"),
    ({"SCRIPT": "run_ternary.py"}, ["nope.yaml"], "ERROR: CONFIG 'nope.yaml' does not exist"),
    ({"SCRIPT": "run_ternary.py", "PYTHON": "no-such-python"}, ["configs/ternary_mr.yaml"],
     "ERROR: PYTHON 'no-such-python' not found"),
])
def test_msrun_launcher_refuses_missing_script_or_config(tmp_path, env_extra, args, message):
    python, log = fake_python(tmp_path)
    env = user_env(**{"PYTHON": python, **env_extra})
    for k in ("SCRIPT", "DEFAULT_CONFIG"):
        if k not in env_extra:
            env.pop(k, None)
    res = subprocess.run(["bash", "scripts/msrun_cpu.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stderr.startswith(message), res.stderr
    assert not log.exists()                                                # msrun never started


def test_every_src_import_in_scripts_and_docs_resolves():
    """Every `from src.<module> import <name>` in the repository names something the module holds: in shell
    scripts and doc snippets (`python -c "..."`) and in lazy imports inside functions, which importing the
    module does not run."""
    import glob
    import importlib
    import importlib.util
    import re
    found, missing = 0, []
    py = [f for d in ("src", "tools", "benchmarks", "tests") for f in glob.glob(os.path.join(ROOT, d, "**", "*.py"),
                                                                            recursive=True)]
    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "*.sh")) + glob.glob(os.path.join(ROOT, "docs", "*.md"))
                       + [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")] + py
                       + glob.glob(os.path.join(ROOT, "*.py"))):
        text = open(path, encoding="utf-8").read()
        for module, names in re.findall(r"from (src(?:\.\w+)+) import ([\w, ]+)", text):
            mod = importlib.import_module(module)
            for name in (n.split()[0] for n in names.split(",") if n.strip()):
                found += 1
                if not hasattr(mod, name) and importlib.util.find_spec(f"{module}.{name}") is None:
                    missing.append(f"{os.path.relpath(path, ROOT)}: {module}.{name}")
    assert found >= 3 and missing == []


def _heading_anchors(path: str) -> set:
    """The anchors GitHub gives the headings of a markdown file: the rendered text (link text kept, code marks
    dropped) lower-cased, punctuation but '-' and '_' removed, spaces as '-'; a repeated heading gets -1, -2, ..."""
    import re
    out, in_code = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6} (.*)", line)
        if m:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "").strip().lower()
            base = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            anchor, n = base, 0
            while anchor in out:
                n += 1
                anchor = f"{base}-{n}"
            out.add(anchor)
    return out


def test_every_section_link_in_the_docs_finds_its_heading(tmp_path):
    """Each `[..](file.md#anchor)` and `[..](#anchor)` of README.md and docs/ names a file that exists and one
    of its headings (a renamed heading breaks the links to it)."""
    import glob
    import re
    md = tmp_path / "a.md"
    md.write_text("## CoNLL-2003 NER ([x.md](x.md#y))\n```\n# not a heading\n```\n"
                  "### Runs (`run.py`)\n### Runs (`run.py`)\n")
    assert _heading_anchors(str(md)) == {"conll-2003-ner-xmd", "runs-runpy", "runs-runpy-1"}
    found, broken, anchors = 0, [], {}     # anchors: file -> its heading anchors, each file read once
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", open(path, encoding="utf-8").read()):
            file = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            found += 1
            if os.path.isfile(file) and file not in anchors:
                anchors[file] = _heading_anchors(file)
            if anchor not in anchors.get(file, ()):
                broken.append(f"{os.path.relpath(path, ROOT)}: {target}#{anchor}")
    assert found >= 10 and broken == []


@pytest.mark.parametrize("script, config, expected", [
    ("run_standalone_td.sh", "configs/td_conll.yaml",
     ["tools/prepare_data.py --task conll --max_seq_length 128 --output_dir data/conll",
      "run_task_distill.py --config_path configs/td_conll.yaml --phase finetune",
      "run_general_distill.py --config_path configs/gd.yaml",
      "run_task_distill.py --config_path configs/td_conll.yaml --phase td1",
      "run_task_distill.py --config_path configs/td_conll.yaml --phase td2"]),
    ("run_standalone_ternary.sh", "configs/ternary_conll.yaml",
     ["tools/prepare_data.py --task conll --max_seq_length 128 --output_dir data/conll",
      "run_task_distill.py --config_path configs/td_conll.yaml --phase finetune",
      "run_ternary.py --config_path configs/ternary_conll.yaml"]),
    ("run_standalone_compress.sh", "configs/compress_conll.yaml",
     ["tools/prepare_data.py --task conll --max_seq_length 128 --output_dir data/conll",
      "run_task_distill.py --config_path configs/td_conll.yaml --phase finetune",
      "run_general_distill.py --config_path configs/gd.yaml",
      "run_compress.py --config_path configs/compress_conll.yaml"]),
])
def test_conll_scripts_prepare_the_data_and_teacher_first(tmp_path, script, config, expected):
    """In a checkout without data or outputs, a standalone script given a CoNLL config first builds data/conll
    (and MiniLM), fine-tunes the CoNLL teacher (and, where the run needs it, the GD student), in that order."""
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "scripts"), repo / "scripts")
    python, log = fake_python(tmp_path)
    res = subprocess.run(["bash", f"scripts/{script}", config], cwd=repo, env=user_env(PYTHON=python),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]
    found = [next((i for i, c in enumerate(calls) if c.startswith(e)), None) for e in expected]
    assert None not in found and found == sorted(found), (calls, expected)


def test_prepare_conll_refuses_an_unknown_option(tmp_path):
    python, log = fake_python(tmp_path)
    res = subprocess.run(["bash", "scripts/prepare_conll.sh", "--techer"], cwd=ROOT, env=user_env(PYTHON=python),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == (
        "ERROR: scripts/prepare_conll.sh: unknown option '--techer' (expected --teacher and/or --student)")
    assert not log.exists()                                          # checked before any step ran
