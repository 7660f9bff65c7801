"""Command-line parsers of the entry scripts, tools and benchmarks: the module docstring is the help.

Its first paragraph is the description shown above the options, the rest (usage examples, notes) the epilog
below them, both printed as written.
"""
import argparse


def doc_parser(doc: str) -> argparse.ArgumentParser:
    paragraphs = (doc or "").strip().split("\n\n")
    return argparse.ArgumentParser(description=paragraphs[0], epilog="\n\n".join(paragraphs[1:]) or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
