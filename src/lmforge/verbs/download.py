"""`lmforge download REPO_ID`: fetch an HF hub checkpoint and convert it to an lmforge checkpoint."""

from __future__ import annotations

from pathlib import Path


def download(repo_id: str, out: str | None = None, revision: str | None = None, token: str | None = None) -> Path:
    """Download a model from the Hugging Face hub and convert it to an lmforge checkpoint.

    Args:
        repo_id: the hub repo, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.
        out: checkpoint directory (default: $LMFORGE_HOME/checkpoints/REPO_ID).
        revision: branch, tag or commit.
        token: HF access token for gated repos (default: $HF_TOKEN / the huggingface_hub login).
    """
    from lmforge._io import lmforge_home
    from lmforge.checkpoint import download as hub_download
    from lmforge.conversion import convert_source

    local = hub_download(repo_id, revision=revision, token=token)
    done = convert_source(local, Path(out) if out else lmforge_home() / "checkpoints" / repo_id, to="lmforge")
    print(done)
    return done.out
