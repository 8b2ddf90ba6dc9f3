"""Straight lines between two stored states (Sagun et al. 2017 §4.1; reusable): the loss and
accuracy along alpha -> results/lines/<name>.zarr; and the batch figure that draws one,
results/figures/sagun2017_batch.pdf (+ .png, + the claim .json).
"""


rule line:
    input:
        start=lambda w: line_end(w, "from"),
        end=lambda w: line_end(w, "to"),
        data=lambda w: dataset_path(
            run_spec(config["lines"][w.line]["from"]["run"])["dataset"]
        ),
        src=stage_sources("line"),
    output:
        directory(f"{RESULTS}/lines/{{line}}.zarr"),
    log:
        "logs/lines/{line}.log",
    benchmark:
        "benchmarks/lines/{line}.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("line"),
        mem_mb=mem_mb("line"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json({"line": config["lines"][w.line], "name": w.line}),
        io=lambda w, input, output: as_json(
            {
                "start": input.start,
                "end": input.end,
                "data": input.data,
                "output": output[0],
            }
        ),
    shell:
        hessvalley("line")


rule sagun2017_batch:
    input:
        unpack(batch_inputs),
        src=stage_sources("sagun2017_batch"),
    output:
        pdf=f"{FIGURES}/sagun2017_batch.pdf",
        json=f"{FIGURES}/sagun2017_batch.json",
        png=report(
            f"{FIGURES}/sagun2017_batch.png",
            caption="../report/sagun2017_batch.rst",
            category="Bulk and outliers",
        ),
    log:
        "logs/figures/sagun2017_batch.log",
    benchmark:
        "benchmarks/figures/sagun2017_batch.tsv"
    threads: 1
    resources:
        runtime=runtime("sagun2017_batch"),
        mem_mb=mem_mb("sagun2017_batch"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {
                "small_eigen": [input.small_eigen],
                "large_eigen": [input.large_eigen],
                "small": [input.small],
                "large": [input.large],
                "switched": [input.switched],
                "line": input.line,
                "output": output.pdf,
            }
        ),
    shell:
        hessvalley("sagun2017_batch")


targets(line_targets)
targets(lambda: section_targets("batch", "sagun2017_batch"))
