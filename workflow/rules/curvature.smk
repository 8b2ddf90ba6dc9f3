"""Curvature along trajectories -> results/<setting>/seed<k>/curvature/{trace,eigen,spectrum}.zarr
and the figure results/figures/<setting>_curvature.pdf (trace, extreme eigenvalues, spectrum).
"""


rule curvature_trace:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("curvature_trace"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/curvature/trace.zarr"),
    log:
        "logs/curvature/{setting}/seed{seed}_trace.log",
    benchmark:
        "benchmarks/curvature/{setting}/seed{seed}_trace.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("curvature_trace"),
        mem_mb=mem_mb("curvature_trace"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: curvature_kwargs(w, "trace"),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("curvature_trace")


rule curvature_eigen:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("curvature_eigen"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/curvature/eigen.zarr"),
    log:
        "logs/curvature/{setting}/seed{seed}_eigen.log",
    benchmark:
        "benchmarks/curvature/{setting}/seed{seed}_eigen.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("curvature_eigen"),
        mem_mb=mem_mb("curvature_eigen"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: curvature_kwargs(w, "eigen"),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("curvature_eigen")


rule curvature_spectrum:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("curvature_spectrum"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/curvature/spectrum.zarr"),
    log:
        "logs/curvature/{setting}/seed{seed}_spectrum.log",
    benchmark:
        "benchmarks/curvature/{setting}/seed{seed}_spectrum.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("curvature_spectrum"),
        mem_mb=mem_mb("curvature_spectrum"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: curvature_kwargs(w, "spectrum"),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("curvature_spectrum")


rule curvature_figure:
    input:
        unpack(curvature_figure_inputs),
        src=stage_sources("curvature_figure"),
    output:
        pdf=f"{FIGURES}/{{setting}}_curvature.pdf",
        png=report(
            f"{FIGURES}/{{setting}}_curvature.png",
            caption="../report/curvature.rst",
            category="Curvature along training",
            subcategory="{setting}",
        ),
    log:
        "logs/figures/{setting}_curvature.log",
    benchmark:
        "benchmarks/figures/{setting}_curvature.tsv"
    threads: 1
    resources:
        runtime=runtime("curvature_figure"),
        mem_mb=mem_mb("curvature_figure"),
    params:
        kwargs=lambda w: as_json(
            {
                "setting": w.setting,
                "figures": {k: config["figures"][k] for k in ("dpi", "band")},
            }
        ),
        io=lambda w, input, output: as_json(
            {
                "traces": list(input.get("trace", [])),
                "eigens": list(input.get("eigen", [])),
                "spectra": list(input.get("spectrum", [])),
                "output": output.pdf,
            }
        ),
    shell:
        hessvalley("curvature_figure")


targets(curvature_targets)
