"""MkDocs hook: publish the files of ``benchmarks/results/`` with the site.

The pages link result files as ``../benchmarks/results/<file>``, which works when the Markdown is read in
the repository (on GitHub, say). This hook adds those files to the site under ``benchmarks/results/`` and
rewrites the links to that place, so the same links work in the built site too. Only the folder's own files
are published, not its ``runs/`` subfolder.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def on_files(files, config):
    for path in sorted(RESULTS.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            uri = path.relative_to(REPO).as_posix()
            files.append(File(uri, src_dir=str(REPO), dest_dir=config["site_dir"], use_directory_urls=False))
    return files


def on_page_markdown(markdown, page, config, files):
    # pages sit at the top of docs/, so ../benchmarks/results/ there is benchmarks/results/ in the site
    return markdown.replace("](../benchmarks/results/", "](benchmarks/results/")
