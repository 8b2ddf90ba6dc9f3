"""Datasets -> resources/data/<name>.zarr (images, labels, split indices, provenance)."""


rule dataset:
    input:
        src=stage_sources("dataset"),
    output:
        directory(f"{DATA}/{{dataset}}.zarr"),
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/data/{dataset}.tsv"
    threads: 1
    resources:
        runtime=runtime("dataset"),
        mem_mb=mem_mb("dataset"),
    params:
        kwargs=lambda w: as_json(
            {"spec": config["datasets"][w.dataset], "name": w.dataset}
        ),
        io=lambda w, output: as_json({"output": output[0]}),
    shell:
        hessvalley("dataset")
