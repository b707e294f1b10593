"""Dataset text split into prose and code blocks for display (strings only: escaping is the template's)."""

from __future__ import annotations

from popalign.label.render import Block, blocks, prompt_turns, size_note


def test_plain_text_is_one_prose_block():
    assert blocks("Hello\nworld") == [Block("text", "Hello\nworld")]


def test_fenced_code_between_prose_keeps_its_language_and_indentation():
    text = "Install it:\n```python\ndef f():\n    return 1\n```\nDone."
    assert blocks(text) == [
        Block("text", "Install it:"),
        Block("code", "def f():\n    return 1", "python"),
        Block("text", "Done."),
    ]


def test_tilde_fences_and_a_longer_closing_fence():
    assert blocks("~~~\nx\n~~~~") == [Block("code", "x")]


def test_a_fence_of_the_other_kind_does_not_close_the_block():
    assert blocks("```\na\n~~~\nb\n```") == [Block("code", "a\n~~~\nb")]


def test_an_unclosed_fence_runs_to_the_end():
    assert blocks("before\n```sh\nls -l") == [Block("text", "before"), Block("code", "ls -l", "sh")]


def test_markup_stays_literal_text():
    # The renderer must not interpret anything: the template escapes these characters.
    text = "<script>alert(1)</script> & <b>bold</b>"
    assert blocks(text) == [Block("text", text)]


def test_empty_text_has_no_blocks():
    assert blocks("") == []
    assert blocks("\n\n") == []


def test_inline_code_spans():
    assert Block("text", "use `pip install x` then `run`.").spans() == [
        ("text", "use "),
        ("code", "pip install x"),
        ("text", " then "),
        ("code", "run"),
        ("text", "."),
    ]
    assert Block("text", "a lone ` backtick").spans() == [("text", "a lone ` backtick")]


def test_prompt_turns_for_strings_and_chat_messages():
    assert prompt_turns("Hi") == [("user", [Block("text", "Hi")])]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt_turns(chat) == [("system", [Block("text", "Be brief.")]), ("user", [Block("text", "Hi")])]


def test_size_note_counts_words():
    assert size_note("one two  three\nfour") == "4 words"
    assert size_note("one") == "1 word"
    assert size_note("") == "0 words"
