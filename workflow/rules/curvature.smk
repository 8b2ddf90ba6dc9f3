"""Curvature along trajectories -> results/<setting>/seed<k>/curvature/{trace,eigen,spectrum}.zarr
and the figure results/figures/<setting>_curvature.pdf (trace, extreme eigenvalues, spectrum).
"""

CURVATURE_SRC = src("trajectory_curvature.py", "curvature/*.py", "train.py", "data.py")


rule curvature_trace:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=CURVATURE_SRC,
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/curvature/trace.zarr"),
    log:
        "logs/curvature/{setting}/seed{seed}_trace.log",
    benchmark:
        "benchmarks/curvature/{setting}/seed{seed}_trace.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu"],
    params:
        kwargs=lambda w: curvature_kwargs(w, "trace"),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley(
            "hessvalley.trajectory_curvature:trace_along_trajectory", device=True
        )


rule curvature_eigen:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=CURVATURE_SRC,
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/curvature/eigen.zarr"),
    log:
        "logs/curvature/{setting}/seed{seed}_eigen.log",
    benchmark:
        "benchmarks/curvature/{setting}/seed{seed}_eigen.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu"],
    params:
        kwargs=lambda w: curvature_kwargs(w, "eigen"),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley(
            "hessvalley.trajectory_curvature:eigen_along_trajectory", device=True
        )


rule curvature_spectrum:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=CURVATURE_SRC,
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/curvature/spectrum.zarr"),
    log:
        "logs/curvature/{setting}/seed{seed}_spectrum.log",
    benchmark:
        "benchmarks/curvature/{setting}/seed{seed}_spectrum.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu"],
    params:
        kwargs=lambda w: curvature_kwargs(w, "spectrum"),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley(
            "hessvalley.trajectory_curvature:spectrum_along_trajectory", device=True
        )


rule curvature_figure:
    input:
        unpack(curvature_figure_inputs),
        src=src("figures/curvature.py", "figures/common.py"),
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
    params:
        kwargs=lambda w: as_json(
            {
                "setting": w.setting,
                "figures": {k: config["figures"][k] for k in ("dpi", "band")},
            }
        ),
        io=lambda w, input, output: as_json(
            {
                "traces": list(input.trace),
                "eigens": list(input.eigen),
                "spectra": list(input.get("spectrum", [])),
                "output": output.pdf,
            }
        ),
    shell:
        hessvalley("hessvalley.figures.curvature:curvature_figure")


targets(curvature_targets)
