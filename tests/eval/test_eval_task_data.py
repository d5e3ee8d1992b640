"""The offline harness tasks' corpus passages come from the embedded corpus's token store:
decoded by document bounds, its documents are the corpus's own text, in order."""

from palm_platform.data.config import DataConfig
from palm_platform.data.corpus import iter_builtin_documents
from palm_platform.eval.task_data import store_documents


def test_the_store_documents_are_the_embedded_corpus(tmp_path):
    decoded = list(store_documents(DataConfig(cache_dir=str(tmp_path)), tmp_path))
    assert decoded == list(iter_builtin_documents("builtin:default-corpus"))
