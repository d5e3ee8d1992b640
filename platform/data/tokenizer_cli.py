"""`palm tokenizer train|inspect|encode`: train a lossless SentencePiece model, look inside
one, or tokenise a corpus once into a pre-tokenised ArrayRecord shard.

    palm tokenizer train --input data/*.jsonl --vocab-size 256000 --output out/palm256k
    palm tokenizer inspect --model out/palm256k.model --text "def f(x):\\n    return 42"
    palm tokenizer encode --model out/palm256k.model --input data/*.jsonl --output web.arrayrecord

A job reads an encoded shard as any other source path (`data.sources[].paths`), with no
tokenising at start-up; the shard holds token ids, so the job must use the same tokenizer.

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
    encode = sub.add_parser(
        "encode", help="tokenise documents into a pre-tokenised ArrayRecord shard"
    )
    encode.add_argument("--model", required=True, help=".model path or builtin:default")
    encode.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files, folders, globs, fsspec URLs or builtin:default-corpus")
    encode.add_argument("--output", required=True, help="the shard to write (.arrayrecord)")
    encode.add_argument("--format", default="auto", choices=["auto", "jsonl", "text", "parquet"])
    encode.add_argument("--text-field", default="text", help="JSON key or Parquet column")
    inspect = sub.add_parser("inspect", help="print a model's ids and tokenise a text")
    inspect.add_argument("--model", required=True, help=".model path or builtin:default")
    inspect.add_argument("--text", default=None, help="text to tokenise")


def _documents(paths: list[str], fmt: str, text_field: str) -> Iterator[str]:
    stats = readers.ReadStats()
    for path in paths:
        for file in readers.expand_path(path):
            for document in readers.iter_documents(file, fmt, text_field, stats):
                if isinstance(document, str):
                    yield document
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


def _encode(args: argparse.Namespace) -> int:
    if not _inputs_exist("encode", args.input):
        return 2
    if readers.detect_format(args.output) != "arrayrecord":
        print(f"palm tokenizer encode: --output {args.output}: not an ArrayRecord name, so a job "
              "would read it as text. Fix: end it in .arrayrecord", file=sys.stderr)
        return 2
    try:
        tokenizer = load_tokenizer(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"palm tokenizer encode: --model: {e}", file=sys.stderr)
        return 2
    documents = _documents(args.input, args.format, args.text_field)
    count = readers.write_pretokenized_shard(args.output, (tokenizer.encode(d) for d in documents))
    print(
        f"{args.output}: {count} documents, tokenizer {tokenizer.path} (sha256 "
        f"{tokenizer.sha256[:12]})"
    )
    return 0


def main(args: argparse.Namespace) -> int:
    if args.action == "encode":
        return _encode(args)
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
