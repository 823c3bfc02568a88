from setuptools import find_packages, setup

EXTRAS = {
    "geometry": ["scipy>=1.11", "scikit-learn>=1.4", "matplotlib>=3.8"],
    "encoders": [
        "transformers>=4.46",
        "tokenizers",
        "sentencepiece",
        "protobuf",
        "pillow",
        "accelerate>=0.34",
        "pyarrow",
    ],
    # llava-torch itself is installed with --no-deps (its metadata pins torch 2.0 and
    # transformers 4.36); these are the runtime dependencies it really needs.
    "llava": ["deepspeed>=0.15", "accelerate>=0.34", "einops", "peft", "shortuuid"],
    # lmms-eval imports filelock's private `_api` without declaring filelock; 4.3 removed it.
    "eval": ["lmms-eval==0.7.3", "math-verify==0.9.0", "matplotlib>=3.8", "filelock>=3.15.3,<4.3"],
    "test": ["pytest>=8", "pytest-xdist", "pytest-timeout"],
}
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "test" for req in reqs})

setup(
    name="revision_plugin",
    version="0.1.0",
    description="ReVision/ReAlign: text-only projector pretraining for LLaVA-style MLLMs",
    packages=find_packages(include=["revision_plugin", "revision_plugin.*"]),
    package_data={"revision_plugin": ["py.typed", "hosts/patches/*/*.patch"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy>=1.24", "safetensors>=0.4", "tqdm>=4.60"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["revision=revision_plugin.cli:main"],
        "lmms_eval.models": ["revision_llava=revision_plugin.lmms_manifest:manifest"],
    },
)
