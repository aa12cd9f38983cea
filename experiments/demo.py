"""The demo: trains each paper's tiny config on the embedded phantoms and writes a report.

``python -m experiments.demo --workdir runs/demo`` (what ``make demo`` runs). For every section a
paper declares (``radjax.papers.<paper>.demo.SECTIONS``) it trains through the same loop as
``experiments.train``, evaluates the trained and an untrained model on the held-out split, and
writes ``<workdir>/report.md`` and a self-contained ``<workdir>/report.html`` with figures:
loss curves, trained / untrained / baseline bars per metric, ROC curves (head / medium / tail)
where the evaluation gives them, and per generative task the input images beside the generated
and the reference text. A section that is no train-and-evaluate run names a ``runner`` in its
paper's demo module, which returns its own blocks (an online stream, say). Papers run side
by side in spawned processes (``--jobs``, default 2). Re-running resumes finished parts from
their checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time

from absl import app, flags

from benchmarks import common as machine
from experiments import report
from experiments.sections import (
    Demo,
    by_paper,
    config_label,
    core_groups,
    demos,
    longest_first,
    section,
    stage_runs,
)
from radjax import registry, runtime

WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where runs, data and the report go.")
PAPERS = flags.DEFINE_list("papers", [], "Papers to demo (default: every paper with a demo).")
JOBS = flags.DEFINE_integer(
    "jobs",
    2,
    "Papers demoed at once, each in its own process (1: one after another in this one). "
    "Compilation and evaluation leave a core idle that another paper's training uses.",
)

TITLE = "radjax demo report"


def _run_paper(demo: Demo, workdir: str) -> list[tuple]:
    from radjax.train import loop

    if demo.runner:
        logging.info("[%s] running %s:%s", demo.name, demo.module, demo.arg)
        runner = getattr(registry.module(demo.paper, "demo"), demo.runner)
        return runner(demo.arg, workdir)
    t0 = time.time()
    runs = stage_runs(demo, workdir)
    for name, run_dir, config in runs:
        logging.info("[%s] training %s in %s", name, config_label(demo, name), run_dir)
        loop.train_and_evaluate(config, run_dir)
    name, run_dir, config = runs[-1]
    trained = report.latest_eval(run_dir)
    logging.info("[%s] evaluating the untrained model", name)
    fresh = config.copy_and_resolve_references()
    fresh.init_from.workdir = ""  # untrained = a fresh init, not the previous stage
    untrained = loop.evaluate_checkpoint(
        fresh, os.path.join(workdir, f"{name}_untrained"), config.train.eval_split, untrained=True
    )
    minutes = (time.time() - t0) / 60
    hook = getattr(registry.optional_module(demo.paper, "demo"), "sample_images", None)
    split = config.train.eval_split
    trained_as = " then ".join(
        f"`{config_label(demo, n)}` ({c.train.steps} steps)" for n, _, c in runs
    )
    intro = (
        f"{trained_as} — {minutes:.1f} min (training + trained and untrained evaluation). "
        f"Run dir: `{run_dir}`; held-out split `{split}`."
    )
    return section(
        demo,
        workdir,
        report.read_metrics(run_dir),
        trained,
        untrained,
        intro,
        (lambda task, rows: hook(config, split, task, rows)) if hook else None,
    )


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_papers(paper_demos: list[Demo], workdir: str) -> list[tuple]:
    """Every section of one paper, in order (a worker process's job)."""
    _log_to_stderr()
    # an untrained evaluation loads the programs its trained evaluation compiled (the stages
    # of a recipe differ in their schedules' constants, so they compile anew)
    runtime.enable_compilation_cache(os.path.join(workdir, "jax_cache"))
    return [block for demo in paper_demos for block in _run_paper(demo, workdir)]


def _pin_worker(free_cores) -> None:
    """A worker process's initializer: binds it to the next group of cores in the queue
    ``free_cores`` before JAX starts, so that XLA sizes its thread pool to that group."""
    os.sched_setaffinity(0, free_cores.get())


def run_all(all_demos: list[Demo], workdir: str, jobs: int) -> list[tuple]:
    """Report blocks of every section, in report order. With ``jobs`` > 1 each paper runs in
    its own (spawned) process, ``jobs`` at a time, the longest (``Demo.minutes``) first; each
    worker has its own cores (``core_groups``; Linux): two 2-thread XLA pools sharing two
    cores spend their time waiting at each other's barriers."""
    groups = by_paper(all_demos)
    if jobs <= 1 or len(groups) <= 1:
        return _run_papers(all_demos, workdir)
    context = multiprocessing.get_context("spawn")
    pin: dict = {}
    if hasattr(os, "sched_setaffinity"):
        free_cores = context.Queue()
        for cores in core_groups(sorted(os.sched_getaffinity(0)), jobs):
            free_cores.put(cores)
        pin = dict(initializer=_pin_worker, initargs=(free_cores,))
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, **pin) as pool:
        futures = {i: pool.submit(_run_papers, groups[i], workdir) for i in longest_first(groups)}
        return [block for i in range(len(groups)) for block in futures[i].result()]


def _machine_line(minutes: float, probe_gflops: float, counters) -> str:
    """How long the demo ran and on what, so that its times can be compared across machines:
    the CPU, its threads, a 2048 x 2048 f32 matmul's GFLOP/s measured at the start and the
    share of CPU time the hypervisor gave to other guests during the run (steal)."""
    steal = machine.steal_fraction(counters, machine.cpu_counters())
    stolen = "" if steal is None else f"; CPU steal during the run {100 * steal:.0f} %"
    return (
        f"Demo: {minutes:.1f} min on {machine.cpu_name()} ({machine.cpu_threads()} threads); "
        f"2048 x 2048 f32 matmul {probe_gflops:.0f} GFLOP/s at the start{stolen}."
    )


def main(argv):
    del argv
    _log_to_stderr()
    workdir = WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    blocks: list[tuple] = [
        ("heading", 1, TITLE),
        (
            "text",
            "Tiny configs trained on the embedded synthetic phantoms (original on-disk "
            "formats), evaluated on held-out phantoms.",
        ),
        ("text", ""),
    ]
    t0, counters = time.time(), machine.cpu_counters()
    probe = machine.matmul_ceiling(2048).gflops
    blocks += run_all(demos(tuple(PAPERS.value)), workdir, JOBS.value)
    blocks.append(("text", _machine_line((time.time() - t0) / 60, probe, counters)))
    md, page = report.write_report(blocks, workdir, TITLE)
    logging.info("report written to %s and %s", md, page)
    print(open(md).read())


if __name__ == "__main__":
    app.run(main)
