"""Toy models (W&S Figs 2b, 2c-d, 7) -> results/toy/<id>.zarr and results/figures/<id>.pdf."""

TOY = f"{RESULTS}/toy"


rule toy_fig2b:
    input:
        src=stage_sources("toy_fig2b"),
    output:
        directory(f"{TOY}/wei2020_fig2b.zarr"),
    log:
        "logs/toy/wei2020_fig2b.log",
    benchmark:
        "benchmarks/toy/wei2020_fig2b.tsv"
    threads: 1
    resources:
        runtime=runtime("toy_fig2b"),
        mem_mb=mem_mb("toy_fig2b"),
    params:
        kwargs=lambda w: as_json({"spec": config["toy"]["fig2b"]}),
        io=lambda w, input, output: as_json({"output": output[0]}),
    shell:
        hessvalley("toy_fig2b")


rule toy_fig2cd:
    input:
        src=stage_sources("toy_fig2cd"),
    output:
        directory(f"{TOY}/wei2020_fig2cd.zarr"),
    log:
        "logs/toy/wei2020_fig2cd.log",
    benchmark:
        "benchmarks/toy/wei2020_fig2cd.tsv"
    threads: 1
    resources:
        runtime=runtime("toy_fig2cd"),
        mem_mb=mem_mb("toy_fig2cd"),
    params:
        kwargs=lambda w: as_json({"spec": config["toy"]["fig2cd"]}),
        io=lambda w, input, output: as_json({"output": output[0]}),
    shell:
        hessvalley("toy_fig2cd")


rule toy_fig7:
    input:
        src=stage_sources("toy_fig7"),
    output:
        directory(f"{TOY}/wei2020_fig7.zarr"),
    log:
        "logs/toy/wei2020_fig7.log",
    benchmark:
        "benchmarks/toy/wei2020_fig7.tsv"
    threads: 1
    resources:
        runtime=runtime("toy_fig7"),
        mem_mb=mem_mb("toy_fig7"),
    params:
        kwargs=lambda w: as_json({"spec": config["toy"]["fig7"]}),
        io=lambda w, input, output: as_json({"output": output[0]}),
    shell:
        hessvalley("toy_fig7")


rule wei2020_fig2b:
    input:
        store=rules.toy_fig2b.output[0],
        src=stage_sources("wei2020_fig2b"),
    output:
        pdf=f"{FIGURES}/wei2020_fig2b.pdf",
        png=report(
            f"{FIGURES}/wei2020_fig2b.png",
            caption="../report/wei2020_fig2b.rst",
            category="Toy models",
        ),
        json=f"{FIGURES}/wei2020_fig2b.json",
    log:
        "logs/figures/wei2020_fig2b.log",
    benchmark:
        "benchmarks/figures/wei2020_fig2b.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig2b"),
        mem_mb=mem_mb("wei2020_fig2b"),
    params:
        kwargs=lambda w: as_json(
            {"figures": {k: config["figures"][k] for k in ("dpi", "band")}}
        ),
        io=lambda w, input, output: as_json(
            {"store_path": input.store, "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig2b")


rule wei2020_fig2cd:
    input:
        store=rules.toy_fig2cd.output[0],
        src=stage_sources("wei2020_fig2cd"),
    output:
        pdf=f"{FIGURES}/wei2020_fig2cd.pdf",
        png=report(
            f"{FIGURES}/wei2020_fig2cd.png",
            caption="../report/wei2020_fig2cd.rst",
            category="Toy models",
        ),
        json=f"{FIGURES}/wei2020_fig2cd.json",
    log:
        "logs/figures/wei2020_fig2cd.log",
    benchmark:
        "benchmarks/figures/wei2020_fig2cd.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig2cd"),
        mem_mb=mem_mb("wei2020_fig2cd"),
    params:
        kwargs=lambda w: as_json(
            {"figures": {k: config["figures"][k] for k in ("dpi", "band")}}
        ),
        io=lambda w, input, output: as_json(
            {"store_path": input.store, "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig2cd")


rule wei2020_fig7:
    input:
        store=rules.toy_fig7.output[0],
        src=stage_sources("wei2020_fig7"),
    output:
        pdf=f"{FIGURES}/wei2020_fig7.pdf",
        png=report(
            f"{FIGURES}/wei2020_fig7.png",
            caption="../report/wei2020_fig7.rst",
            category="Toy models",
        ),
        json=f"{FIGURES}/wei2020_fig7.json",
    log:
        "logs/figures/wei2020_fig7.log",
    benchmark:
        "benchmarks/figures/wei2020_fig7.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig7"),
        mem_mb=mem_mb("wei2020_fig7"),
    params:
        kwargs=lambda w: as_json(
            {"figures": {k: config["figures"][k] for k in ("dpi", "band")}}
        ),
        io=lambda w, input, output: as_json(
            {"store_path": input.store, "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig7")


targets(
    lambda: [
        f"{FIGURES}/wei2020_{name}.pdf"
        for name in ("fig2b", "fig2cd", "fig7")
        if f"toy.{name}" in GIVEN
    ]
)
