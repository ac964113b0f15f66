rule prepare_data:
    output:
        f"{EXP}/data/{{split}}.npz",
    params:
        dataset=config["dataset"]["name"],
        extra=lambda w: " ".join(
            ([f"--data-root {config['dataset']['data_root']}"] if config["dataset"]["data_root"] else [])
            + (["--download"] if config["dataset"]["download"] else [])
            + ([] if config["dataset"]["verify_checksums"] else ["--no-verify"])
            + (
                [f"--max-images {config['dataset']['max_train_images']}"]
                if w.split == "train" and config["dataset"]["max_train_images"]
                else []
            )
        ),
    benchmark:
        f"{EXP}/benchmarks/prepare_data/{{split}}.tsv",
    log:
        f"{LOGS}/prepare_data/{{split}}.log",
    conda:
        ENV
    shell:
        "python -m ied prepare --dataset {params.dataset} --split {wildcards.split} --out {output} {params.extra} > {log} 2>&1"


rule train_evaluator:
    """The digits CNN that stands in for Inception on 8×8 digits (test accuracy must reach 95%)."""
    input:
        train=f"{EXP}/data/train.npz",
        test=f"{EXP}/data/test.npz",
    output:
        f"{EXP}/evaluator/digits-cnn.pt",
    benchmark:
        f"{EXP}/benchmarks/train_evaluator/digits-cnn.tsv",
    log:
        f"{LOGS}/train_evaluator/digits-cnn.log",
    conda:
        ENV
    shell:
        "python -m ied train-evaluator --train {input.train} --test {input.test} --out {output} > {log} 2>&1"
