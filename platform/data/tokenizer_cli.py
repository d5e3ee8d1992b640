"""`palm tokenizer train|inspect`: train a lossless SentencePiece model, or look inside one.

    palm tokenizer train --input data/*.jsonl --vocab-size 256000 --output out/palm256k
    palm tokenizer inspect --model out/palm256k.model --text "def f(x):\\n    return 42"

Tokenising a corpus once for training is `palm data prepare JOB.yaml` (the token store);
the ArrayRecord shards `palm tokenizer encode` used to write were removed with it.

Inputs are read with the same readers as the pipeline (JSONL, text, Parquet, fsspec URLs,
builtin corpus names). The bundled `builtin:default` tokenizer was made with
`palm tokenizer train --input builtin:default-corpus --vocab-size 1024 --num-threads 1
--output platform/data/corpus/default` (see corpus/README.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from palm_platform.data import readers
from palm_platform.data.tokenizer import load_tokenizer, train_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train a lossless SentencePiece model")
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, folders, globs, fsspec URLs or builtin:default-corpus",
    )
    train.add_argument("--vocab-size", type=int, required=True, help="number of pieces")
    train.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model")
    train.add_argument(
        "--format",
        default="auto",
        choices=["auto", "jsonl", "text", "parquet"],
        help="input format",
    )
    train.add_argument("--text-field", default="text", help="JSON key or Parquet column")
    train.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    train.add_argument(
        "--max-sentences",
        type=int,
        default=10_000_000,
        help="lines sampled for training (SentencePiece input_sentence_size)",
    )
    train.add_argument("--num-threads", type=int, default=None, help="default: all cores")
    inspect = sub.add_parser("inspect", help="print a model's ids and tokenise a text")
    inspect.add_argument("--model", required=True, help=".model path or builtin:default")
    inspect.add_argument("--text", default=None, help="text to tokenise")


def _documents(paths: list[str], fmt: str, text_field: str) -> Iterator[str]:
    stats = readers.ReadStats()
    for path in paths:
        for file in readers.expand_path(path):
            yield from readers.iter_documents(file, fmt, text_field, stats)
    if sum(stats.bad.values()):
        print(f"skipped bad records: {dict(stats.bad)}", file=sys.stderr)


def _inputs_exist(action: str, paths: list[str]) -> bool:
    for path in paths:
        try:
            readers.expand_path(path)
        except FileNotFoundError as e:
            print(f"palm tokenizer {action}: --input: {e}", file=sys.stderr)
            return False
    return True


def main(args: argparse.Namespace) -> int:
    if args.action == "train":
        if not _inputs_exist("train", args.input):
            return 2
        try:
            model_path = train_tokenizer(
                _documents(args.input, args.format, args.text_field),
                args.output,
                args.vocab_size,
                model_type=args.model_type,
                max_sentences=args.max_sentences,
                num_threads=args.num_threads,
            )
        except ValueError as e:
            print(f"palm tokenizer train: {e}", file=sys.stderr)
            return 1
        print(model_path)
        return 0
    tokenizer = load_tokenizer(args.model)
    print(f"model:      {tokenizer.path}")
    print(f"sha256:     {tokenizer.sha256}")
    print(f"vocab size: {tokenizer.vocab_size}")
    print(f"eos id:     {tokenizer.eos_id}   pad id: {tokenizer.pad_id}")
    if args.text is not None:
        ids = tokenizer.encode(args.text)
        print(f"{len(ids)} tokens: {ids}")
        print("pieces:", [tokenizer.id_to_piece(i) for i in ids])
        print("lossless:", tokenizer.decode(ids) == args.text)
    return 0
