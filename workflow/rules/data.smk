rule prepare_data:
    """One split of the dataset in the prepared format (uint8 images, labels, checksum)."""
    output:
        out(layout.DATA),
    params:
        dataset=config["dataset"]["name"],
        max_images=lambda w: (config["dataset"]["max_train_images"] or 0) if w.split == "train" else 0,
    resources:
        # where the upstream files lie and whether to re-check their md5s does not change the prepared data
        data_root=config["dataset"]["data_root"] or "",
        download=int(config["dataset"]["download"]),
        verify=int(config["dataset"]["verify_checksums"]),
    benchmark:
        bench("prepare_data", "{split}")
    log:
        log("prepare_data", "{split}"),
    conda:
        ENV
    shell:
        "python -m ied prepare --dataset {params.dataset} --split {wildcards.split} --out {output:q}"
        " --data-root={resources.data_root:q} --download {resources.download} --verify {resources.verify}"
        " --max-images {params.max_images} > {log:q} 2>&1"


rule train_evaluator:
    """The digits CNN that stands in for Inception on 8×8 digits (test accuracy must reach 95%)."""
    input:
        train=out(layout.DATA, split="train"),
        test=out(layout.DATA, split="test"),
    output:
        out(layout.EVALUATOR),
    benchmark:
        bench("train_evaluator", "digits-cnn")
    log:
        log("train_evaluator", "digits-cnn"),
    conda:
        ENV
    shell:
        "python -m ied train-evaluator --train {input.train:q} --test {input.test:q} --out {output:q} > {log:q} 2>&1"
