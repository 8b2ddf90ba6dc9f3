"""Projected paths (Wei & Schwab §2.1.1, §4.3, A.2) -> results/<setting>/seed<k>/...

projection/grid_<i>.zarr      one job per group of checkpoint intervals: the GD projection
                              of each grid checkpoint, once per seed (segments share them)
projection/segment_<i>.zarr   one job per group of checkpoint intervals: line
                              connectedness, recursive bisection with exact SGD replay
projected_path.zarr           the segments joined in step order (gather)
projected_trace.zarr          Hessian trace (Hutch++) along the projected path, of the
                              Hessian the curvature rules take (the `curvature` keys)
and the figures wei2020_fig1, wei2020_fig3, wei2020_fig4, each with its claim checked from the
data (<id>.json, gathered into results/claims.csv).

The number of segment jobs comes from the config (epochs, steps per epoch, checkpoint_every,
projection checkpoint_stride and intervals_per_segment), so a dry run lists every job; runs that stop early are
refused by the config check below.
"""


rule projection_grid:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("projection_grid"),
    output:
        directory(
            f"{RESULTS}/{{setting}}/seed{{seed}}/projection/grid_{{segment}}.zarr"
        ),
    log:
        "logs/project/{setting}/seed{seed}/grid_{segment}.log",
    benchmark:
        "benchmarks/project/{setting}/seed{seed}/grid_{segment}.tsv"
    wildcard_constraints:
        setting=PROJECTED_RE,
        segment=r"\d+",
    threads: config["threads"]
    resources:
        runtime=runtime("projection_grid"),
        mem_mb=mem_mb("projection_grid"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: projection_kwargs(w, projection_plan.GRID_KEYS),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("projection_grid")


rule projection_segment:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        grids=grid_paths,
        src=stage_sources("projection_segment"),
    output:
        directory(
            f"{RESULTS}/{{setting}}/seed{{seed}}/projection/segment_{{segment}}.zarr"
        ),
    log:
        "logs/project/{setting}/seed{seed}/segment_{segment}.log",
    benchmark:
        "benchmarks/project/{setting}/seed{seed}/segment_{segment}.tsv"
    wildcard_constraints:
        setting=PROJECTED_RE,
        segment=r"\d+",
    threads: config["threads"]
    resources:
        runtime=runtime("projection_segment"),
        mem_mb=mem_mb("projection_segment"),
        gpu=config["gpu"],
    params:
        kwargs=projection_kwargs,
        io=lambda w, input, output: as_json(
            {
                "trajectory": input.trajectory,
                "data": input.data,
                "grids": list(input.grids),
                "output": output[0],
            }
        ),
    shell:
        hessvalley("projection_segment")


rule projected_path:
    input:
        segments=lambda w: segment_paths(w.setting, w.seed),
        src=stage_sources("projected_path"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/projected_path.zarr"),
    log:
        "logs/project/{setting}/seed{seed}/projected_path.log",
    benchmark:
        "benchmarks/project/{setting}/seed{seed}/projected_path.tsv"
    wildcard_constraints:
        setting=PROJECTED_RE,
    threads: 1
    resources:
        runtime=runtime("projected_path"),
        mem_mb=mem_mb("projected_path"),
    params:
        kwargs=lambda w: as_json({"setting": w.setting, "seed": int(w.seed)}),
        io=lambda w, input, output: as_json(
            {"segments": list(input.segments), "output": output[0]}
        ),
    shell:
        hessvalley("projected_path")


rule projected_trace:
    input:
        path=f"{RESULTS}/{{setting}}/seed{{seed}}/projected_path.zarr",
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("projected_trace"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/projected_trace.zarr"),
    log:
        "logs/project/{setting}/seed{seed}/projected_trace.log",
    benchmark:
        "benchmarks/project/{setting}/seed{seed}/projected_trace.tsv"
    wildcard_constraints:
        setting=PROJECTED_RE,
    threads: config["threads"]
    resources:
        runtime=runtime("projected_trace"),
        mem_mb=mem_mb("projected_trace"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json(
            {
                "trace": config["projection"]["trace"],
                "curvature": hessian_kwargs(),
                "setting": w.setting,
                "seed": int(w.seed),
            }
        ),
        io=lambda w, input, output: as_json(
            {
                "path": input.path,
                "trajectory": input.trajectory,
                "data": input.data,
                "output": output[0],
            }
        ),
    shell:
        hessvalley("projected_trace")


rule wei2020_fig1:
    input:
        paths=figure_paths("fig1", "path"),
        trajectories=figure_paths("fig1", "trajectory"),
        src=stage_sources("wei2020_fig1"),
    output:
        pdf=f"{FIGURES}/wei2020_fig1.pdf",
        json=f"{FIGURES}/wei2020_fig1.json",
        png=report(
            f"{FIGURES}/wei2020_fig1.png",
            caption="../report/wei2020_fig1.rst",
            category="Projected paths",
        ),
    log:
        "logs/figures/wei2020_fig1.log",
    benchmark:
        "benchmarks/figures/wei2020_fig1.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig1"),
        mem_mb=mem_mb("wei2020_fig1"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {
                "paths": list(input.paths),
                "trajectories": list(input.trajectories),
                "output": output.pdf,
            }
        ),
    shell:
        hessvalley("wei2020_fig1")


rule wei2020_fig3:
    input:
        traces=figure_paths("fig3", "trace"),
        src=stage_sources("wei2020_fig3"),
    output:
        pdf=f"{FIGURES}/wei2020_fig3.pdf",
        json=f"{FIGURES}/wei2020_fig3.json",
        png=report(
            f"{FIGURES}/wei2020_fig3.png",
            caption="../report/wei2020_fig3.rst",
            category="Projected paths",
        ),
    log:
        "logs/figures/wei2020_fig3.log",
    benchmark:
        "benchmarks/figures/wei2020_fig3.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig3"),
        mem_mb=mem_mb("wei2020_fig3"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {"traces": list(input.traces), "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig3")


rule wei2020_fig4:
    input:
        paths=figure_paths("fig4", "path"),
        trajectories=figure_paths("fig4", "trajectory"),
        traces=figure_paths("fig4", "trace"),
        src=stage_sources("wei2020_fig4"),
    output:
        pdf=f"{FIGURES}/wei2020_fig4.pdf",
        json=f"{FIGURES}/wei2020_fig4.json",
        png=report(
            f"{FIGURES}/wei2020_fig4.png",
            caption="../report/wei2020_fig4.rst",
            category="Projected paths",
        ),
    log:
        "logs/figures/wei2020_fig4.log",
    benchmark:
        "benchmarks/figures/wei2020_fig4.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig4"),
        mem_mb=mem_mb("wei2020_fig4"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {
                "paths": list(input.paths),
                "trajectories": list(input.trajectories),
                "traces": list(input.traces),
                "output": output.pdf,
            }
        ),
    shell:
        hessvalley("wei2020_fig4")


targets(projection_targets)
