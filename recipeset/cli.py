"""The ``recipeset`` command line: a thin click layer over the library.

Heavy imports (torch, pandas, mlflow) happen inside the commands, so ``recipeset --help`` stays fast.
Every user-facing error is a :class:`~recipeset.errors.RecipesetError`: one line on stderr, non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from recipeset.errors import RecipesetError, one_line
from recipeset.progress import phase, reporting
from recipeset.registry import DATASETS, LOSSES, MODELS, OBJECTIVES, ORDERS, Registry
from recipeset.threads import set_passive_wait_policy

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


class UserError(click.ClickException):
    """A RecipesetError shown as ``error: <message>`` with exit code 1."""

    def format_message(self) -> str:
        return self.message


class RegistryChoice(click.Choice):
    """A choice among a registry's names, read when the option is shown or parsed (so entries registered after
    import — plug-ins, tests — are offered and accepted)."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(())
        self.registry = registry

    @property
    def choices(self) -> tuple[str, ...]:
        return self.registry.names()

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry is the source
        pass

    def convert(self, value, param, ctx):
        # one line with a suggestion, like a config file's mistake (not click's usage block)
        return self.registry.get(value, f"--{param.name}") and value


class LazyHelpOption(click.Option):
    """An option whose help text is a function of the registries, evaluated when help is shown."""

    def __init__(self, *args, help_fn=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help_fn = help_fn

    def get_help_record(self, ctx: click.Context):
        if self.help_fn is not None:
            self.help = self.help_fn()
        return super().get_help_record(ctx)


QUIET_HELP = ("No progress on stderr (a live line on a terminal; elsewhere a plain line at each 10%, at least every "
              "30 s). --json implies it.")


def quiet_option(command):
    """``--quiet``: the command reports no progress (:mod:`recipeset.progress`)."""
    return click.option("--quiet", is_flag=True, help=QUIET_HELP)(command)


def _one_line_usage(e: click.UsageError) -> click.UsageError:
    """Click's usage error as one line that says where help is (click prints the usage block and a hint above
    the error when the exception carries its context)."""
    if e.ctx is None or isinstance(e, click.exceptions.NoArgsIsHelpError):  # already one line; a group's help
        return e
    return click.UsageError(one_line(f"{e.format_message()} (see '{e.ctx.command_path} -h')"))


class RecipesetGroup(click.Group):
    """Turns RecipesetError (raised anywhere below) into a one-line click error, also under CliRunner; a usage
    error (a bad option value, a missing argument, an unknown command) is one line too, exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:  # the group's own options
            raise _one_line_usage(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RecipesetError as e:
            raise UserError(str(e)) from None
        except click.UsageError as e:  # a subcommand's options and arguments, an unknown subcommand
            raise _one_line_usage(e) from None


@click.group(cls=RecipesetGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="recipeset")
def cli() -> None:
    """recipeset: model recipes as sets of ingredients."""


def reads_datasets(command):
    """``--lenient`` and ``--option KEY=VALUE``: how a command that reads a dataset reads it — the run config's
    ``data.lenient`` and ``data.options`` (the loader's own options), which the loaders' error messages name."""
    command = click.option("--option", "loader_options", multiple=True, metavar="KEY=VALUE",
                           help="A loader option (data.options; repeatable): ingredients_column=NAME, "
                                "cuisine_column=NAME, id_column=NAME, delimiter=';', sep=',' for CSV/JSONL files; "
                                "verify=false, keep_unmapped=true for flavornet.")(command)
    return click.option("--lenient", is_flag=True, help="Skip malformed lines (counted in the cleaning report) "
                        "instead of failing (data.lenient).")(command)


def _loader_options(pairs: tuple[str, ...]) -> dict:
    return _parse_overrides(pairs, "--option")


# ---- data -------------------------------------------------------------------------------------------
@cli.group(cls=RecipesetGroup)
def data() -> None:
    """Inspect and fetch datasets."""


def _format_stats(d: dict) -> str:
    s = d["set_size"]
    lines = [f"{d['name']}: {d['recipes']} recipes, {d['ingredients']} ingredients, {d['cuisines']} cuisines"
             + (f" ({d['unlabelled']} unlabelled)" if d["unlabelled"] else ""),
             f"set size: min {s['min']}, mean {s['mean']:.2f}, median {s['median']:g}, max {s['max']}",
             "size histogram: " + " ".join(f"{k}:{v}" for k, v in s["histogram"].items())]
    if d["per_cuisine"]:
        lines.append("per cuisine: " + ", ".join(f"{k} {v}" for k, v in d["per_cuisine"].items()))
    lines.append("per source: " + ", ".join(f"{k} {v}" for k, v in d["per_source"].items()))
    lines.append("top ingredients: " + ", ".join(f"{n} {c}" for n, c in d["top_ingredients"][:10]))
    if d["sha256"]:
        lines.append(f"sha256: {d['sha256']}")
    return "\n".join(lines)


@data.command("stats")
@click.argument("dataset")
@click.option("--path", default=None, help="Dataset directory or file (flavornet: the files' directory).")
@reads_datasets
@click.option("--ingredients", "all_ingredients", is_flag=True,
              help="List every ingredient name with its count of recipes (the names complete/classify accept); "
                   "with --json: all of them in top_ingredients.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def data_stats(dataset: str, path: str | None, lenient: bool, loader_options: tuple[str, ...], all_ingredients: bool,
               as_json: bool) -> None:
    """Counts, set-size distribution and cleaning report of DATASET (flavornet, whatscooking, synthetic,
    or a .csv/.jsonl/.json file)."""
    import json

    from recipeset.data.sources import load_dataset

    table = load_dataset(dataset, path=path, lenient=lenient, options=_loader_options(loader_options))
    d = table.describe(top=None if all_ingredients else 20)
    if all_ingredients and not as_json:
        width = max((len(name) for name, _ in d["top_ingredients"]), default=0)
        for name, count in d["top_ingredients"]:
            click.echo(f"{name:<{width}}  {count}")
        return
    if as_json:
        click.echo(json.dumps(d))
    else:
        click.echo(_format_stats(d))
        click.echo(str(table.report))


@data.command("download")
@click.argument("dataset", type=click.Choice(["flavornet"]))
@click.option("--dest", default=None, help="Target directory [default: $RECIPESET_FLAVORNET_DIR or data/flavornet].")
@click.option("--base-url", default=None, help="Fetch from here instead of the pinned mirrors "
              "(also $RECIPESET_FLAVORNET_URL).")
def data_download(dataset: str, dest: str | None, base_url: str | None) -> None:
    """Download DATASET and verify every file against its pinned SHA-256."""
    from recipeset.data.sources.flavornet import download_flavornet

    out = download_flavornet(dest, base_url=base_url, progress=click.echo)
    click.echo(f"{dataset}: ready in {out}")


# ---- train ------------------------------------------------------------------------------------------
def _parse_overrides(pairs: tuple[str, ...], what: str) -> dict:
    """``KEY=VALUE`` strings -> dict; values parsed as JSON when they look like JSON, else kept as strings."""
    import json

    from recipeset.io_utils import parse_json

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RecipesetError(f"{what} {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = parse_json(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _objective_weights(pairs: tuple[str, ...]) -> dict:
    weights = {}
    for pair in pairs:
        name, _, w = pair.partition("=")
        try:
            weights[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise RecipesetError(f"--objective {pair!r}: the weight must be a number (e.g. cls=0.5)") from None
    return weights


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML/JSON run config; the options below override it.")
@click.option("--dataset", default=None, cls=LazyHelpOption,
              help_fn=lambda: f"{' | '.join(DATASETS.names())} [default: synthetic], or a .csv/.jsonl file.")
@click.option("--path", default=None, help="Where the dataset's files are (flavornet: their directory).")
@reads_datasets
@click.option("--model", type=RegistryChoice(MODELS), default=None,
              help="Model family [default: deep-sets, the study's best; with --config: the file's].")
@click.option("--loss", type=RegistryChoice(LOSSES), default=None,
              help="Loss of the set objective [default: standard].")
@click.option("--objective", "objectives", multiple=True, metavar="NAME[=WEIGHT]", cls=LazyHelpOption,
              help_fn=lambda: f"Repeatable: {', '.join(OBJECTIVES.names())} [default: the model's natural "
                              "objective].")
@click.option("--order", type=RegistryChoice(ORDERS), default=None,
              help="Ingredient order fed to sequence models [default: frequency].")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: 10].")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (wins over --epochs).")
@click.option("--seed", type=int, default=None, help="Initialisation and data-order seed (not the split).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config field by dotted key, e.g. --set model.d_model=64 --set train.lr=3e-4.")
@click.option("--out", default=None, help="Run directory [default: runs/<run name>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init-from", default=None, metavar="MODEL_DIR", help="Start a new run from a trained model.")
@click.option("--tracking-uri", default=None, help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db].")
@click.option("--experiment", default=None, help="MLflow experiment name [default: recipeset].")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow.")
@click.option("--register", default=None, metavar="NAME",
              help="Register the run's MLflow pyfunc model in the Model Registry as NAME (its next version: "
                   "mlflow.pyfunc.load_model('models:/NAME/<version>')).")
@click.option("--deterministic", is_flag=True, help="Deterministic torch kernels.")
@quiet_option
@click.option("--baselines/--no-baselines", default=True,
              help="Score the cheap baselines (popularity, co-occurrence, item-kNN) on the same queries and show "
                   "the best beside the model [default: on].")
@click.option("--json", "as_json", is_flag=True, help="Print every metric as one JSON object.")
def train(config_file, dataset, path, lenient, loader_options, model, loss, objectives, order, epochs, max_steps, seed,
          sets, out, resume, init_from, tracking_uri, experiment, no_track, register, deterministic, quiet, baselines,
          as_json) -> None:
    """Train a model, evaluate it on its own test split and track the run in MLflow.

    With no options: the project's best recipe (Deep Sets, every ingredient held out in turn) on the embedded
    synthetic dataset, in about a minute on 2 CPU cores; it prints a compact table (model, Bayes-optimal, best
    baseline); every metric is in MLflow and in --json.
    """
    import json

    from recipeset.config import MAIN_JOB, RunConfig, load_config
    from recipeset.protocol import CHEAP_BASELINES

    cfg = load_config(config_file) if config_file else RunConfig()
    sets_over = _parse_overrides(sets, "--set")
    # the main job's recipe unless the command names a model (--model, --config, --set model.name, a run to resume
    # or start from): `--set model.name=decoder` is not a decoder with the main job's Deep Sets dropout
    chosen = config_file or model or resume or init_from or "model.name" in sets_over
    over: dict = {} if chosen else dict(MAIN_JOB)
    for key, value in (("data.dataset", dataset), ("data.path", path), ("model.name", model),
                       ("loss.name", loss), ("data.order", order), ("train.epochs", epochs),
                       ("train.max_steps", max_steps), ("train.seed", seed),
                       ("tracking.tracking_uri", tracking_uri), ("tracking.experiment", experiment),
                       ("data.lenient", lenient or None)):
        if value is not None:
            over[key] = value
    over.update({f"data.options.{k}": v for k, v in _loader_options(loader_options).items()})
    if deterministic:
        over["train.deterministic"] = True
    if objectives:
        over["objectives.weights"] = _objective_weights(objectives)
    over.update(sets_over)
    if resume:
        _check_resume_options(out, config_file, over)
    cfg = cfg.override(over, source="command line")

    from recipeset.distributed import process_group
    from recipeset.pipeline import run_training

    with process_group() as world:  # torchrun: join the ranks (a single process: nothing to do)
        result = run_training(cfg, out_dir=out, resume=resume, init_from=init_from, track=not no_track,
                              progress=not (quiet or as_json), baselines=CHEAP_BASELINES if baselines else (),
                              register=register)
    if not world.is_main:
        return
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.out_dir), "model_dir": str(result.model_dir),
                               "run_id": result.run_id, "pyfunc_uri": result.pyfunc_uri,
                               "registered": result.registered, "test": result.metrics, "val": result.val_metrics,
                               "baselines": result.baselines}, default=float))
        return
    click.echo(f"run directory: {result.out_dir}")
    click.echo(f"model: {result.model_dir}  (recipeset complete {result.model_dir} \"tomato, garlic\")")
    if result.run_id:
        click.echo(f"mlflow run: {result.run_id}  (recipeset ui; every metric there, or --json)")
    if result.registered:
        click.echo(f"registered: {result.registered}  (mlflow.pyfunc.load_model, or mlflow models serve -m "
                   f"{result.registered} --env-manager local)")
    _echo_headline(result.metrics, result.baselines)


def _echo_headline(metrics: dict, baselines: dict) -> None:
    """The compact table of a run: metric | model | Bayes-optimal | best baseline (test split)."""
    from recipeset.protocol import headline_rows

    def cell(v) -> str:
        return "" if v is None else f"{v:.3f}"

    rows = headline_rows(metrics, baselines)
    click.echo(f"  {'test metric':<22} {'model':>7} {'Bayes-optimal':>14}   best baseline")
    for r in rows:
        ref = f"{cell(r.bayes)} (true)" if r.metric == "set/pred_size" else cell(r.bayes)
        base = f"{cell(r.baseline)} ({r.baseline_name})" if r.baseline_name else ""
        click.echo(f"  {r.metric:<22} {r.model:>7.3f} {ref:>14}   {base}")


def _check_resume_options(out: str | None, config_file: str | None, over: dict) -> None:
    """``--resume`` continues a run with its saved config.json: options that would change it are an error
    (they used to be ignored silently, e.g. a larger --max-steps); repeating the original options is fine."""
    from recipeset.config import load_config, resolve_run

    saved_file = Path(out) / "config.json" if out is not None else None
    if saved_file is None or not saved_file.exists():
        return  # run_training reports the missing run/checkpoint
    saved = load_config(saved_file)
    asked = resolve_run((load_config(config_file) if config_file else saved).override(over, source="command line"))
    a, s = asked.flatten(), saved.flatten()
    changed = sorted(k for k in a.keys() | s.keys() if not k.startswith("tracking.") and a.get(k) != s.get(k))
    if changed:
        raise RecipesetError(f"--resume continues {out} as saved in its config.json, but these options differ: "
                             f"{', '.join(changed[:6])}; drop them, or start a new run with --init-from {out}/model")


def _echo_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        click.echo(f"  {key:<34} {value:.4f}" if isinstance(value, float) else f"  {key:<34} {value}")


# ---- evaluate / complete / classify ---------------------------------------------------------------------
ENSEMBLE_HELP = ("Another model (directory or runs:/ URI) to average with MODEL_DIR (repeatable): an ensemble of "
                 "models sharing one vocabulary.")


def _load_scorer(model_dir: str, ensemble: tuple[str, ...]):
    """MODEL_DIR's model, or with ``--ensemble`` the ensemble of it and the other models."""
    from recipeset.runs import load_ensemble, load_model

    return load_ensemble([model_dir, *ensemble]) if ensemble else load_model(model_dir)


def _check_evaluate_options(dataset: str | None, split: str, baselines: tuple[str, ...], memory: str | None,
                            set_pairs: tuple[str, ...]) -> dict:
    """``evaluate``'s options that cannot go together or name nothing, refused in one line; the ``--set``
    overrides."""
    from recipeset.baselines import BASELINES

    if baselines and (dataset is not None or split != "test"):
        raise RecipesetError("--baseline compares on the run's own test split; drop --dataset and --split")
    if memory is not None and dataset is not None:
        raise RecipesetError("--memory is fit on the run's own training split; drop --dataset")
    ranking = [name for name, cls in BASELINES.items() if "completion" in cls.tasks]
    for option, name in [*(("--baseline", b) for b in baselines), *([("--memory", memory)] if memory else [])]:
        if name not in ranking:
            raise RecipesetError(f"{option} {name!r}: not a completion baseline; choose from {', '.join(ranking)}")
    overrides = _parse_overrides(set_pairs, "--set")
    for key in overrides:
        if not key.startswith("eval."):
            raise RecipesetError(f"--set {key}: evaluate changes eval.* settings only (the model is trained; "
                                 "`recipeset train --set` for the others)")
    return overrides


@cli.command()
@click.argument("model_dir")
@click.option("--ensemble", "ensemble", multiple=True, metavar="MODEL_DIR", help=ENSEMBLE_HELP + " Its stop "
              "threshold and cuisine rule are tuned on MODEL_DIR's run's validation split first.")
@click.option("--dataset", default=None, help="Evaluate on all recipes of another dataset [default: the run's "
              "own test split].")
@click.option("--path", default=None, help="Where --dataset's files are.")
@reads_datasets
@click.option("--split", type=click.Choice(["test", "val"]), default="test", help="Which split of the run's data.")
@click.option("--max-queries", type=click.IntRange(min=1), default=None, help="Evaluate on N seeded recipes only.")
@click.option("--baseline", "baselines", multiple=True, metavar="NAME", help="A classical baseline (repeatable, "
              "e.g. mlp) fit on the run's split and scored on the same test queries: adds model − baseline "
              "Recall@10 and MRR with a paired 95%% bootstrap interval over recipes (vs/NAME/...).")
@click.option("--memory", default=None, metavar="NAME", help="Mix the model (or ensemble) with a completion "
              "baseline fit on the run's training split, e.g. recipe-knn (retrieval-augmented completion): "
              "(1 − w)·p_model + w·p_memory, the memory scoring the given ingredients; w and the stop rule are "
              "tuned on the run's validation set completion first.")
@click.option("--set", "set_pairs", multiple=True, metavar="eval.KEY=VALUE",
              help="An evaluation setting of the run's config (eval.* keys only; repeatable), e.g. --set "
                   "eval.query_draws=10 or, for an --ensemble's tuned rules, --set eval.cuisine_max_accuracy_drop=0.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@quiet_option
def evaluate(model_dir, ensemble, dataset, path, lenient, loader_options, split, max_queries, baselines, memory,
             set_pairs, as_json, quiet) -> None:
    """The evaluation table of a trained model (MODEL_DIR or runs:/<id>/model), or of an --ensemble."""
    import json

    from recipeset.pipeline import compare_with_baselines, run_data, with_memory
    from recipeset.protocol import evaluate_model

    overrides = _check_evaluate_options(dataset, split, baselines, memory, set_pairs)
    with reporting(not (quiet or as_json)):
        m = _load_scorer(model_dir, ensemble)
        # an ensemble's rules are tuned as a run's; under --memory the mixture tunes its own instead
        cfg, sets, data = run_data(m, model_dir, split=split, dataset=dataset, path=path,
                                   tune=bool(ensemble) and memory is None, lenient=lenient,
                                   options=_loader_options(loader_options), overrides=overrides)
        if memory is not None:
            m = with_memory(m, memory, cfg, data)
        if max_queries is not None:
            cfg.eval.max_queries = max_queries
        if baselines and "completion" not in cfg.eval.tasks:
            cfg.eval.tasks = [*cfg.eval.tasks, "completion"]
        ranks: list | None = [] if baselines else None
        with phase(f"evaluating {split if dataset is None else dataset}"):
            metrics = evaluate_model(m, sets, cfg, per_query=ranks)
        if baselines:
            for name, diffs in compare_with_baselines(cfg, data, ranks, baselines).items():
                for metric, d in diffs.items():
                    metrics.update({f"vs/{name}/{metric}": d.difference, f"vs/{name}/{metric}/low": d.low,
                                    f"vs/{name}/{metric}/high": d.high})
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        _echo_metrics(metrics)


def _query_names(text: str | None, names: tuple[str, ...]) -> list[str]:
    """The query a user typed: INGREDIENTS (comma-separated, or a JSON list such as '["salt, kosher", "egg"]')
    followed by every ``--ingredient NAME`` (taken whole, so a name may hold a comma). Names are looked up as the
    loaders write them (``Vocabulary.encode`` normalises: "Olive Oil" finds olive_oil)."""
    import json

    from recipeset.data.table import parse_ingredient_list

    query: list[str] = []
    if text is not None and text.lstrip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipesetError(f"INGREDIENTS {text!r}: not a JSON list ({e.msg}); give a list such as "
                                 "'[\"tomato\", \"basil\"]', comma-separated names, or --ingredient NAME") from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise RecipesetError(f"INGREDIENTS {text!r}: a JSON list must hold names (strings)")
        query = [x for x in parsed if x.strip()]
    elif text is not None and text.strip():
        query = parse_ingredient_list(text)
    query += [x for x in names if x.strip()]
    if not query:
        raise RecipesetError("give at least one ingredient: \"tomato, basil\", a JSON list, or --ingredient NAME "
                             "(repeatable)")
    return query


INGREDIENT_HELP = "An ingredient, taken whole (a name may hold a comma); repeatable, added to INGREDIENTS."


@cli.command()
@click.argument("model_dir")
@click.argument("ingredients", required=False)
@click.option("--ingredient", "names", multiple=True, metavar="NAME", help=INGREDIENT_HELP)
@click.option("--top", type=click.IntRange(min=1), default=10, help="How many ranked suggestions.")
@click.option("--generate", is_flag=True, help="Generate the rest of the recipe instead of ranking.")
@click.option("--max-new", type=click.IntRange(min=1), default=10,
              help="With --generate: at most this many new ingredients.")
@click.option("--temperature", type=float, default=0.0, help="With --generate: 0 = greedy.")
@click.option("--mode", type=click.Choice(["next", "joint"]), default="next", help="Decoder scoring mode.")
@click.option("--cuisine", default=None, help="Condition on a cuisine (models trained with cuisine conditioning).")
@click.option("--ensemble", "ensemble", multiple=True, metavar="MODEL_DIR", help=ENSEMBLE_HELP)
def complete(model_dir, ingredients, names, top, generate, max_new, temperature, mode, cuisine, ensemble) -> None:
    """Suggest what goes with INGREDIENTS ("tomato, basil", or a JSON list), or --generate the rest of the recipe.
    Names are matched as the datasets write them ("Olive Oil" is olive_oil)."""
    query = _query_names(ingredients, names)
    m = _load_scorer(model_dir, ensemble)
    if generate:
        out = m.complete([query], max_new=max_new, temperature=temperature, cuisine=cuisine)[0]
        click.echo(", ".join(out) if out else "(nothing to add)")
        return
    for rank, (name, prob) in enumerate(m.top_completions([query], top=top, mode=mode, cuisine=cuisine)[0], 1):
        click.echo(f"{rank:>3}. {name:<28} {prob:.3f}")


@cli.command()
@click.argument("model_dir")
@click.argument("ingredients", required=False)
@click.option("--ingredient", "names", multiple=True, metavar="NAME", help=INGREDIENT_HELP)
@click.option("--top", type=click.IntRange(min=1), default=3, help="How many cuisines to show.")
@click.option("--ensemble", "ensemble", multiple=True, metavar="MODEL_DIR", help=ENSEMBLE_HELP)
def classify(model_dir, ingredients, names, top, ensemble) -> None:
    """Cuisine probabilities of INGREDIENTS ("soy_sauce, ginger", or a JSON list; names matched as the datasets
    write them)."""
    query = _query_names(ingredients, names)
    m = _load_scorer(model_dir, ensemble)
    if not m.can_classify and not ensemble:  # an ensemble names the member without a head itself
        raise RecipesetError(f"{model_dir}: this model has no cuisine head; train it with --objective cls")
    probs = m.classify([query])[0]
    for i in probs.argsort(descending=True)[:top].tolist():
        click.echo(f"{m.vocab.cuisine_name(i):<24} {float(probs[i]):.3f}")


# ---- baselines ----------------------------------------------------------------------------------------
@cli.command()
@click.option("--dataset", default="synthetic", help="Dataset name or file (as for train).")
@click.option("--path", default=None, help="Where the dataset's files are.")
@reads_datasets
@click.option("--name", "names", multiple=True, help="Only these baselines (repeatable) [default: all].")
@click.option("--seed", type=int, default=0, help="Seed of the baselines' own randomness.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: baseline -> metrics.")
@quiet_option
def baselines(dataset, path, lenient, loader_options, names, seed, as_json, quiet) -> None:
    """The classical baselines, tuned on validation, on the same split and queries as the models."""
    import json

    from recipeset.config import RunConfig
    from recipeset.data.prepare import prepare_data
    from recipeset.protocol import run_baselines_on

    # the default eval settings: the queries of a study (or train) run on the same data with the default [eval]
    cfg = RunConfig().override({"data.dataset": dataset, "data.path": path, "data.lenient": lenient,
                                "data.options": _loader_options(loader_options)})
    data = prepare_data(cfg.data)
    with reporting(not (quiet or as_json)):
        results = run_baselines_on(cfg, data, names=list(names) or None, seed=seed)
    if as_json:
        click.echo(json.dumps({k: {**v["test"], "params": v["params"]} for k, v in results.items()}, default=str))
        return
    for bname, r in results.items():
        click.echo(f"{bname}  {r['params']}")
        _echo_metrics(r["test"])


# ---- experiments -------------------------------------------------------------------------------------
@cli.group(cls=RecipesetGroup)
def experiment() -> None:
    """Run experiment grids (experiments/*.toml)."""


@experiment.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--quick", is_flag=True, help="The file's [quick] grid: fewer variants/seeds/steps.")
@click.option("--jobs", type=click.IntRange(min=1), default=1,
              help="Child runs in parallel, each its own process (log: grid-child.log in its run directory); "
              "1 trains them one by one in this process.")
@click.option("--tracking-uri", default=None, help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db].")
@click.option("--out", default="runs", help="Root of the run directories.")
@click.option("--seeds", default=None, help="Only these seeds, comma-separated (e.g. 0,1) [default: the file's].")
@click.option("--variant", "variants", multiple=True, help="Only this variant (repeatable) [default: all].")
@quiet_option
def experiment_run(file, quick, jobs, tracking_uri, out, seeds, variants, quiet) -> None:
    """Run FILE's grid as one parent MLflow run with a child per variant × seed (finished children are skipped,
    interrupted ones resumed), then log the results tables."""
    from recipeset.study import run_experiment

    if not Path(file).exists():
        raise RecipesetError(f"{file}: experiment file not found (see experiments/)")
    try:
        seed_list = [int(x) for x in seeds.split(",")] if seeds else None
    except ValueError:
        raise RecipesetError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1") from None
    with reporting(not quiet):  # --jobs N: each child's progress lines, prefixed with its name
        outcomes = run_experiment(file, quick=quick, jobs=jobs, uri=tracking_uri, out_root=out, echo=click.echo,
                                  seeds=seed_list, variants=list(variants) or None)
    click.echo(f"{sum(o.status == 'finished' for o in outcomes)} run, "
               f"{sum(o.status == 'skipped' for o in outcomes)} skipped")


@experiment.command("child", hidden=True)
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
def experiment_child(spec) -> None:
    """One child of a parallel grid (started by `experiment run --jobs N`): train the run SPEC (a grid-child.json
    in its run directory) describes and record how it ended beside it."""
    from recipeset.study import run_child_spec

    run_child_spec(spec, echo=click.echo)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="The study's total of finished trials [default: the file's tune.trials].")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Start no new trial after M minutes [default: the file's tune.minutes].")
@click.option("--variant", default=None, help="The [[grid]] variant that gives the fixed part [default: [base]].")
@click.option("--quick", is_flag=True, help="With the file's [quick] overrides (a separate study).")
@click.option("--tracking-uri", default=None, help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db].")
@click.option("--out", default=None, help="The study's directory: optuna.db, trial-<n>/, best_config.toml "
              "[default: runs/tune/<study>].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, help="Trials run at once, each in its own "
              "process with the cores ÷ N threads.  [default: 1]")
@click.option("--worker", is_flag=True, hidden=True, help="One of --jobs N's processes (no summary).")
@quiet_option
def tune(file, trials, minutes, variant, quick, tracking_uri, out, jobs, worker, quiet) -> None:
    """Search FILE's [tune] space on validation with Optuna (TPE, median pruning on the periodic validation):
    one parent MLflow run, a child run per trial. Re-running the same command continues the study."""
    from recipeset.tune import run_tune

    if not Path(file).exists():
        raise RecipesetError(f"{file}: experiment file not found (see experiments/)")
    with reporting(not quiet):
        r = run_tune(file, trials=trials, minutes=minutes, uri=tracking_uri, out=out, variant=variant, quick=quick,
                     echo=click.echo, jobs=jobs, worker=worker)
    if r is None:  # a worker
        return
    click.echo(f"study {r.study}: " + ", ".join(f"{v} {k}" for k, v in r.counts.items()) + f"  ({r.storage})")
    click.echo(f"best trial {r.best_trial}: {r.metric} = {r.best_value:.5g} ({r.direction})")
    for key, value in r.best_params.items():
        click.echo(f"  {key:<34} {value:.5g}" if isinstance(value, float) else f"  {key:<34} {value}")
    click.echo(f"best config: {r.config_path}  (recipeset train --config {r.config_path})")
    click.echo(f"mlflow parent run: {r.parent_run_id}")


@cli.command()
@click.argument("experiment_name")
@click.option("--metric", default=None, help="Sort the runs by this metric (e.g. test/completion/mrr).")
@click.option("--tracking-uri", default=None, help="MLflow store.")
@click.option("--runs", "show_runs", is_flag=True, help="List individual runs instead of the per-variant tables.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Also save the study's figures (completion.png, learning_curves.png) into this directory.")
def compare(experiment_name, metric, tracking_uri, show_runs, as_json, plots_dir) -> None:
    """Compare an experiment's runs: per-task tables (mean ± std over seeds), or --runs best first."""
    from recipeset.runs import search_runs_table
    from recipeset.study import results_tables, study_figures, tables_json, tables_markdown
    from recipeset.tracking import open_store

    tracking_uri = open_store(tracking_uri)
    if show_runs or metric:
        table = search_runs_table(experiment_name, tracking_uri, metric=metric)
        if table.empty:
            raise RecipesetError(f"experiment {experiment_name!r} has no runs in this store")
        cols = ["run", "status"] + ([metric.replace("@", "_at_")] if metric else [])
        cols = [c for c in cols if c in table.columns]
        click.echo(table[cols].to_json(orient="records") if as_json else table[cols].to_string(index=False))
        return
    tables = results_tables(experiment_name, tracking_uri)
    if not tables:
        raise RecipesetError(f"experiment {experiment_name!r} has no finished runs in this store")
    click.echo(tables_json(tables) if as_json else tables_markdown(tables))
    if plots_dir:
        out = Path(plots_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in study_figures(experiment_name, tracking_uri).items():
            fig.savefig(out / name, dpi=110)
            click.echo(f"saved {out / name}", err=True)


@cli.command("replay-metrics")
@click.argument("path", type=click.Path(exists=True))
@click.option("--tracking-uri", default=None, help="Send them to this store [default: the one the run used].")
def replay_metrics(path, tracking_uri) -> None:
    """Send to MLflow what a run could not log while its store did not answer: PATH is the run directory (or its
    unlogged_metrics.jsonl). The file is then renamed unlogged_metrics.jsonl.replayed."""
    from recipeset.tracking import replay_unlogged

    click.echo(f"{replay_unlogged(path, tracking_uri)} metrics sent")


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, help="Port on 127.0.0.1.")
@click.option("--tracking-uri", default=None, help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db].")
@click.option("--experiment", default=None, help="Show this experiment's runs [default: the one with the latest run].")
@click.option("--open", "open_browser", is_flag=True, help="Open the runs view in the web browser once it serves.")
def ui(port, tracking_uri, experiment, open_browser) -> None:
    """Start the MLflow UI on 127.0.0.1 for the store and print the URL of an experiment's runs view: every run a
    row, the headline test metrics as columns. Ctrl-C or SIGTERM stops the server and all its workers."""
    import webbrowser

    from recipeset.processes import port_in_use, run_process_group, when_listening
    from recipeset.runs import runs_view_url
    from recipeset.tracking import resolve_tracking_uri

    if port_in_use(port):
        raise RecipesetError(f"port {port} is in use: pass --port N")
    uri = resolve_tracking_uri(tracking_uri)
    url = runs_view_url(f"http://127.0.0.1:{port}", experiment, uri)
    click.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port}  (Ctrl-C stops it)\nruns view: {url}")
    if open_browser:
        when_listening(port, lambda: webbrowser.open(url))
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port)]
    raise SystemExit(run_process_group(cmd))


@cli.command()
@click.option("--dataset", default="flavornet", help="Real batches from this dataset (flavornet falls back to the "
              "synthetic default when its files are not found).")
@click.option("--path", default=None, help="Where the dataset's files are.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64)
@click.option("--d-model", type=click.IntRange(min=1), default=128)
@click.option("--steps", type=click.IntRange(min=2), default=20, help="Timed training steps per variant.")
@click.option("--variant", "variants", multiple=True, help="Only this model-loss variant (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@quiet_option
def bench(dataset, path, batch_size, d_model, steps, variants, as_json, quiet) -> None:
    """The performance report: training and evaluation throughput of every model × set loss on real batches,
    FLOP/s against this machine's dense matmul, padding, data-pipeline share, peak memory (see README,
    'Performance'). Run it on a quiet machine."""
    import json

    from recipeset.bench import performance_report

    with reporting(not (quiet or as_json)):
        report = performance_report(dataset, path, batch_size=batch_size, d_model=d_model, steps=steps,
                                    variants=list(variants) or None, echo=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['dataset']}, batch {report['batch_size']}, d_model {report['d_model']}, "
               f"{report['torch_threads']} threads, load {report['load_average']}, dense matmul "
               f"{report['dense_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, peak RSS {report['peak_rss_mb']} MB")
    for name, r in report["variants"].items():
        click.echo(f"{name:<26} {r['recipes_per_s']:>8} rec/s  step {r['step_ms']} ms  "
                   f"real {r['real_position_fraction']:.2f}{' packed' if r['packed'] else ''}  "
                   f"{r['achieved_over_matmul']:.2f} of matmul  data {r['data_share']:.2f}  "
                   + "  ".join(f"{k[5:]} {v}" for k, v in r.items() if k.startswith("eval_")))
    h = report["hungarian_vs_standard"]
    click.echo(f"hungarian/standard step: {h['hungarian_over_standard_ratio']}")


def main() -> None:
    """Console entry point. SIGTERM raises RunTerminated (a KeyboardInterrupt) from here on, so ``kill`` ends a
    tracked run KILLED and exits like Ctrl-C. OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless
    the user set a policy; set here, before any command imports torch), so a busy machine does not collapse
    the throughput of spin-waiting threads."""
    set_passive_wait_policy()
    from recipeset.signals import install_sigterm_handler

    install_sigterm_handler()
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
