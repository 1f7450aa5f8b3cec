"""The `rung` command: train, eval, collect, plot, list.

Config flags are generated from the algorithm's Config dataclass (field docstrings become the
help). Bad input of any kind ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, NoReturn

from rung.errors import UserError

USAGE = """usage: rung <command> [options]

commands:
  train [ALGO] [--preset NAME] [flags]   train (default: PPO on CartPole-v1); 'rung train ALGO --help' lists flags
  train --resume DIR [flags]             continue a run from its latest checkpoint
  eval DIR [--episodes N] [--video]      evaluate a run's policy, write DIR/eval.json
  collect --env ENV --policy expert|random|DIR --episodes N -o FILE
                                         record whole episodes to a .npz (rung) or .hdf5 (D4RL) file
  plot DIR... -o FILE.png                overlay learning curves (mean and band across seeds)
  list                                   algorithms and presets with their targets
"""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        # No abbreviations: "--num-env 4" taken silently as --num-envs would bypass "did you mean",
        # and would change meaning the day another flag shares the prefix.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}; see '{self.prog} --help'")


# -- dataclass <-> flags ----------------------------------------------------------------------

def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _converter(name: str, tp: Any):
    base, optional = _unwrap_optional(tp)

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            if base is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if typing.get_origin(base) is tuple:
                (inner, *_rest) = typing.get_args(base)
                # Commas or spaces between the widths: "64 64" must not read as one layer of 6464.
                return tuple(inner(p) for p in re.split(r"[,\s]+", text.strip()) if p)
            if typing.get_origin(base) is typing.Literal:
                choices = typing.get_args(base)
                if text not in choices:
                    raise ValueError
                return text
            if base is int:
                return int(float(text)) if "e" in text.lower() and float(text).is_integer() else int(text)
            # inf and nan parse here; BaseConfig.validate refuses them for every field.
            return base(text)
        except ValueError:
            expected = _type_name(tp)
            raise UserError(f"--{name.replace('_', '-')} expects {expected}, got {text!r}") from None

    return convert


def _type_name(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    if typing.get_origin(base) is typing.Literal:
        s = "one of " + ", ".join(map(str, typing.get_args(base)))
    elif typing.get_origin(base) is tuple:
        s = "comma-separated integers such as 64,64"
    else:
        s = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(base, str(base))
    return s + (" or none" if optional else "")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, defaults: Any) -> None:
    from rung.config import BaseConfig, field_docs, literal_choices

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group("config")
    # The algorithm's own fields first, the run-wide ones (seed, device, ...) last.
    base = {f.name for f in dataclasses.fields(BaseConfig)}
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in base):
        tp = hints[f.name]
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        flag = "--" + f.name.replace("_", "-")
        if _unwrap_optional(tp)[0] is bool:
            group.add_argument(flag, nargs="?", const="true", type=_converter(f.name, tp), default=argparse.SUPPRESS,
                               metavar="BOOL", help=f"{docs.get(f.name, '')} (default: {shown})")
            group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const", const=False,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            choices = literal_choices(tp)
            one_of = f"; one of {', '.join(map(str, choices))}" if choices else ""
            group.add_argument(flag, type=_converter(f.name, tp), default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=f"{docs.get(f.name, '')} (default: {shown}{one_of})")


def _reject_unknown(unknown: list[str], cls: type) -> None:
    flags = ["--" + f.name.replace("_", "-") for f in dataclasses.fields(cls)]
    bad = next(u for u in unknown if u.startswith("-")) if any(u.startswith("-") for u in unknown) else unknown[0]
    close = difflib.get_close_matches(bad.split("=")[0], flags, n=1)
    hint = f"did you mean {close[0]}?" if close else "see 'rung train ALGO --help' for the flags"
    raise UserError(f"unknown argument {bad!r}; {hint}")


def _peek(argv: list[str], flag: str) -> str | None:
    """The value given to `flag` (as `--flag V` or `--flag=V`), without consuming it."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# -- commands ---------------------------------------------------------------------------------

def cmd_train(argv: list[str]) -> int:
    from rung import algos, presets
    from rung.config import from_dict

    algo_name = None
    if argv and not argv[0].startswith("-"):
        algo_name, argv = argv[0], argv[1:]
    pre = Parser(prog="rung train", add_help=False)
    pre.add_argument("--preset")
    pre.add_argument("--resume", metavar="DIR")
    pre.add_argument("--force", action="store_true")
    pre.add_argument("-h", "--help", action="store_true")
    known, rest = pre.parse_known_args(argv)

    resume_cfg: dict[str, Any] | None = None
    if known.resume:
        if known.preset:
            raise UserError("--resume continues a run with its own config; drop --preset")
        if known.force:
            raise UserError("--resume continues the run in its folder and --force would replace it; drop one")
        from rung.checkpoint import read_run_config

        cfg_path = Path(known.resume) / "config.yaml"
        if not cfg_path.exists():
            raise UserError(f"{known.resume} holds no run to resume (no config.yaml); check the path")
        resume_cfg = read_run_config(known.resume)
        saved_algo = resume_cfg.pop("algo")
        if algo_name and algo_name != saved_algo:
            raise UserError(f"{known.resume} is a {saved_algo} run; drop '{algo_name}' or resume another folder")
        algo_name = saved_algo
    preset = presets.get(known.preset) if known.preset and known.preset != "none" else None
    env = _peek(rest, "--env")
    if preset is None and known.preset is None and env and resume_cfg is None:
        # An env with tuned settings starts from them: `rung train ppo --env batched/CartPole-v1`
        # gets the large-batch preset without the user knowing its name.
        preset = presets.for_env(algo_name or "ppo", env)
        if preset:
            print(f"rung: starting from preset {preset.name} (tuned for {env}); flags override it, --preset none skips it")
    if preset:
        if algo_name and algo_name != preset.algo:
            raise UserError(f"preset {preset.name} is for {preset.algo}, not {algo_name}; drop one of them")
        algo_name = preset.algo
    algo = algos.get(algo_name or "ppo")
    cls = algo.Config

    if resume_cfg is not None:
        resume_cfg["run_dir"] = known.resume
        base = from_dict(cls, resume_cfg)
    else:
        base = cls(**preset.overrides) if preset else cls()
    parser = Parser(prog=f"rung train {algo_name or 'ppo'}", description=(algo.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--preset", help="start from a preset (see 'rung list'); flags override it. Default: the "
                        "preset tuned for --env, if one exists; 'none' starts from the algorithm's defaults")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite a run folder that already holds a run")
    add_config_flags(parser, cls, base)
    if known.help:
        parser.print_help()
        return 0
    ns, unknown = parser.parse_known_args(rest)
    if unknown:
        _reject_unknown(unknown, cls)
    overrides = {k: v for k, v in vars(ns).items() if k not in ("preset", "resume", "force")}
    if isinstance(overrides.get("run_dir"), str) and not overrides["run_dir"].strip():
        raise UserError("--run-dir is empty; give a folder, or leave the flag out for a new one under runs/")
    if resume_cfg is not None and overrides.get("seed", base.seed) != base.seed:
        # The checkpoint's random state goes on as seed base.seed's would; recording another
        # seed would only group the run with that seed's runs.
        raise UserError(f"{known.resume} is seed {base.seed} and resumes as it; drop --seed, or start a new run "
                        f"for seed {overrides['seed']}")
    if resume_cfg is not None and Path(overrides.get("run_dir") or known.resume).resolve() != Path(known.resume).resolve():
        # Resuming reads DIR's config and checkpoint; another --run-dir would be written with
        # DIR's config over whatever run it holds.
        raise UserError(f"--resume {known.resume} continues the run in that folder; drop --run-dir "
                        "(to branch a run, copy its folder and resume the copy)")
    cfg = dataclasses.replace(base, **overrides)
    from rung.run import default_run_dir, discard_unstarted, first_missing, put_back_replaced

    # The folder named here rather than inside the run, so that a run refused before its first
    # step (sac on a discrete env, say) can take away what it made.
    run_dir = Path(cfg.run_dir or default_run_dir(algo_name or "ppo", cfg))
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    made_from = None if resume_cfg is not None else first_missing(run_dir)
    # Under torchrun only the first process owns the folder (Run prepares it there alone).
    owns_folder = os.environ.get("RANK", "0") == "0"
    try:
        algo.train(cfg, resume=resume_cfg is not None, force=known.force)
    except (UserError, OSError):
        if owns_folder and made_from is not None:
            discard_unstarted(run_dir, made_from)
        elif owns_folder and known.force and put_back_replaced(run_dir):
            print(f"the run in {run_dir} was left as it was", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        if owns_folder and known.force and put_back_replaced(run_dir):
            print(f"\ninterrupted before training; the run in {run_dir} was left as it was", file=sys.stderr)
        elif (run_dir / "checkpoints" / "latest.pt").exists():
            print(f"\ninterrupted; continue with: rung train --resume {run_dir}", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first checkpoint, so there is nothing to resume in {run_dir}; "
                  "start the run again (--force reuses the folder)", file=sys.stderr)
        return 130
    return 0


def _is_llm_run(run_dir: Path) -> bool:
    """Whether the run folder is a language-model run's (its config names a task), read from
    config.yaml rather than from a checkpoint that can weigh gigabytes."""
    from rung.checkpoint import read_run_config

    return (run_dir / "config.yaml").is_file() and "task" in read_run_config(run_dir)


def cmd_eval(argv: list[str]) -> int:
    from rung.evaluation import evaluate_run

    p = Parser(prog="rung eval", description="Evaluate a run's policy with deterministic actions (greedy responses "
               "to held-out problems for a language-model run).")
    p.add_argument("run_dir")
    # Defaults of None so that a flag of the other kind of run is refused, not silently ignored.
    env = p.add_argument_group("env runs")
    env.add_argument("--episodes", type=int, help="episodes to run (default 10)")
    env.add_argument("--checkpoint", choices=["best", "latest"], help="which checkpoint (default best)")
    env.add_argument("--seed", type=int, help="seed of the first episode (default 12345)")
    env.add_argument("--video", action="store_true", help="also write DIR/eval.mp4 of one episode")
    llm = p.add_argument_group("language-model runs")
    llm.add_argument("--prompts", type=int, help="held-out problems to score (default: as many as the run evaluated on)")
    llm.add_argument("--prompt-seed", type=int,
                     help="0 (default): the run's own held-out problems; another seed draws others from the test split "
                     "(a task with few distinct problems repeats some)")
    llm.add_argument("--weights", choices=["average", "raw"],
                     help="for a run trained with --ema-decay: its weight average (default) or its last weights")
    llm.add_argument("--samples", type=int,
                     help="also sample this many responses a problem and report pass@k and the sampled accuracy "
                     "(what RL can draw on; default 0: greedy only)")
    llm.add_argument("--temperature", type=float, help="sampling temperature for --samples (default 0.8)")
    a = p.parse_args(argv)
    env_flags = {"--episodes": a.episodes, "--checkpoint": a.checkpoint, "--seed": a.seed, "--video": a.video or None}
    llm_flags = {"--prompts": a.prompts, "--prompt-seed": a.prompt_seed, "--weights": a.weights,
                 "--samples": a.samples, "--temperature": a.temperature}
    if _is_llm_run(Path(a.run_dir)):
        from rung.llm.evaluate import evaluate_run_folder

        _refuse_flags(env_flags, f"{a.run_dir} is a language-model run",
                      "--prompts, --prompt-seed, --weights, --samples and --temperature")
        if a.temperature is not None and not a.samples:
            raise UserError("--temperature is for --samples K (greedy answers have none); add --samples")
        if a.temperature == 0:
            raise UserError("--temperature 0 draws the greedy answer K times, so pass@K would be the greedy accuracy; "
                            "give a temperature above 0")
        r = evaluate_run_folder(Path(a.run_dir), a.prompts, a.prompt_seed or 0, a.weights or "average",
                                a.samples or 0, 0.8 if a.temperature is None else a.temperature)
        sampled = (f"; {r['samples']} samples a problem at temperature {r['temperature']:g}: pass@{r['samples']} "
                   f"{r['pass_at_k']:.3f}, sampled accuracy {r['sample_accuracy']:.3f}" if a.samples else "")
        print(f"{r['task']}  {r['algo']}  step {r['step']:,} ({r['weights']} weights): held-out accuracy "
              f"{r['accuracy']:.3f}, reward {r['reward_mean']:.3f} over {r['prompts']} prompts (seed {r['prompt_seed']})"
              + sampled)
        return 0
    _refuse_flags(llm_flags, f"{a.run_dir} is an env run", "--episodes, --checkpoint, --seed and --video")
    a.episodes = 10 if a.episodes is None else a.episodes
    a.seed = 12345 if a.seed is None else a.seed
    _check_episodes_and_seed(a)
    result = evaluate_run(Path(a.run_dir), a.episodes, a.checkpoint or "best", a.seed, a.video)
    if (a.checkpoint or "best") == "best" and result["checkpoint"] == "latest":
        print("no best.pt in this run (no periodic evaluation has written one): scored latest.pt")
    success = f", success rate {result['success_rate']:.2f}" if result.get("success_rate") is not None else ""
    print(f"{result['env']}  {result['algo']}  checkpoint {result['checkpoint']} (step {result['step']:,}): "
          f"return {result['mean_return']:.2f} ± {result['std_return']:.2f} over {a.episodes} episodes{success}"
          + (f"; video {result['video']}" if result.get("video") else ""))
    return 0


def _check_episodes_and_seed(a: argparse.Namespace) -> None:
    if a.episodes <= 0:
        raise UserError(f"--episodes must be > 0, got {a.episodes}")
    if a.seed < 0:
        raise UserError(f"--seed must be >= 0 (gymnasium's seeds are), got {a.seed}")


def _refuse_flags(flags: dict[str, Any], what: str, its_flags: str) -> None:
    given = [name for name, value in flags.items() if value is not None]
    if given:
        raise UserError(f"{what}; {', '.join(given)} {'is' if len(given) == 1 else 'are'} for the other kind of run "
                        f"(its flags: {its_flags})")


def cmd_collect(argv: list[str]) -> int:
    from rung.buffers import demos

    p = Parser(prog="rung collect", description="Record whole episodes of a scripted expert or a trained run's policy.")
    p.add_argument("--env", help="gymnasium id; with a run folder as --policy, defaults to the run's env")
    p.add_argument("--policy", default="expert", help="'expert' for the scripted expert of --env (rung/envs/experts.py), "
                   "'random' for uniform random actions, or a run folder written by 'rung train' (default expert)")
    p.add_argument("--episodes", type=int, default=10, help="whole episodes to record (default 10)")
    p.add_argument("-o", "--output", required=True, help="file to write: .npz (rung's format) or .hdf5 (D4RL layout, needs rung[offline])")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--num-envs", type=int, default=1, help="env copies stepped together (default 1)")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best", help="a run's checkpoint to use (default best)")
    a = p.parse_args(argv)
    _check_episodes_and_seed(a)
    if a.num_envs <= 0:
        raise UserError(f"--num-envs must be > 0, got {a.num_envs}")
    if demos.file_kind(a.output) == "d4rl":
        demos._h5py()  # fail before recording, not after
    if a.policy == "expert":
        from rung.envs.experts import get_expert

        if not a.env:
            raise UserError("--policy expert needs --env; for example: rung collect --env CartPole-v1 --policy expert -o demos.npz")
        env_id, policy = a.env, get_expert(a.env)
    elif a.policy == "random":
        if not a.env:
            raise UserError("--policy random needs --env; for example: rung collect --env Pendulum-v1 --policy random -o random.npz")
        env_id, policy = a.env, demos.random_policy(a.env, a.seed)
    else:
        env_id, policy = demos.policy_from_run(Path(a.policy), a.checkpoint)
        if a.env and a.env.removeprefix("batched/") != env_id.removeprefix("batched/"):
            raise UserError(f"{a.policy} was trained on {env_id}, not {a.env}; drop --env or pass another run")
    traj = demos.collect(env_id, policy, a.episodes, a.seed, a.num_envs, source=a.policy)
    out = demos.save(traj, a.output)
    returns = traj.returns()
    success = "" if traj.success_rate is None else f", success rate {traj.success_rate:.2f}"
    print(f"{traj.env_id}  {a.policy}: return {returns.mean():.2f} ± {returns.std():.2f} over {traj.num_episodes} episodes "
          f"({len(traj):,} steps){success}; wrote {out}")
    return 0


def cmd_plot(argv: list[str]) -> int:
    from rung.logging.plots import plot_runs

    p = Parser(prog="rung plot", description="Overlay learning curves; runs differing only in seed are averaged.")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--x", choices=["step", "wall"], default="step", help="x axis: env steps or wall-clock seconds")
    a = p.parse_args(argv)
    out = plot_runs(a.run_dirs, a.output, a.x)
    print(f"wrote {out}")
    return 0


def cmd_list(argv: list[str]) -> int:
    from rung.algos import ALGOS
    from rung.presets import PRESETS

    if argv:
        raise UserError(f"rung list takes no arguments, got {' '.join(argv)!r}")

    print("algorithms (rung train ALGO):")
    width = max(map(len, ALGOS)) + 2
    for name, what in ALGOS.items():
        print(f"  {name:<{width}}{what}")
    print("\npresets (rung train --preset NAME), each held to its target (mean eval return unless marked):")
    print(f"  {'name':<22}{'algo':<11}{'env':<22}{'steps':>10}  {'target':>8}  source of the target")
    for p in PRESETS.values():
        target = f"{p.target:g}" + ("" if p.metric == "return" else " sr")
        print(f"  {p.name:<22}{p.algo:<11}{p.overrides.get('env', ''):<22}{p.overrides.get('total_timesteps', 0):>10,}"
              f"  {target:>8}  {p.source}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "collect": cmd_collect, "plot": cmd_plot, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from rung import __version__

        print(f"rung {__version__}")
        return 0
    command = argv[0]
    try:
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, list(COMMANDS), n=1)
            raise UserError(f"unknown command {command!r}" + (f"; did you mean {close[0]}?" if close else f"; choose one of {', '.join(COMMANDS)}"))
        return COMMANDS[command](argv[1:])
    except KeyboardInterrupt:  # training handles its own (it says how to resume); the others have nothing to keep
        print("\ninterrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"rung: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path that cannot be written (a file in the way, no permission) or a full disk: the
        # user's to fix, so one line. Checkpoints are written atomically, so the last one is whole.
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"rung: error: {e.strerror}{f': {e.filename}' if e.filename else ''}; free some space "
                  "(a run's last checkpoint is whole: continue it with rung train --resume DIR)", file=sys.stderr)
            return 2
        if e.filename is None or e.strerror is None:
            raise
        if e.errno in (errno.EEXIST, errno.ENOTDIR):
            # mkdir of a folder where a file stands says "File exists", which reads as the cure.
            what = f"{e.filename} is" if e.errno == errno.EEXIST else f"{e.filename}: a part of this path is"
            print(f"rung: error: {what} a file, not a folder; choose another path", file=sys.stderr)
            return 2
        print(f"rung: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
