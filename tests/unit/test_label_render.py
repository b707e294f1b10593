"""Dataset text to sanitised HTML: Markdown through markdown-it-py, then nh3's allow-list."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("markdown_it")
pytest.importorskip("nh3")

from popalign.label.render import markdown_html, prompt_turns, size_note  # noqa: E402


def html(text: str) -> str:
    return str(markdown_html(text))


def test_headings_emphasis_lists_and_tables_become_markup():
    out = html(
        "# Title\n\n**bold** and *it* and ~~gone~~\n\n- one\n- two\n\n1. first\n\n"
        "| x | y |\n|---|--:|\n| 1 | 2 |"
    )
    for piece in (
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<em>it</em>",
        "<s>gone</s>",
        "<ul>\n<li>one</li>",
        "<ol>\n<li>first</li>",
        "<th>x</th>",
        "<td>2</td>",
    ):
        assert piece in out
    assert "style=" not in out  # alignment styles are dropped (the CSP refuses inline style anyway)


def test_fenced_code_keeps_its_language_and_text_escaped():
    out = html("Install it:\n```python\nif a < b:\n    print('<b>')\n```\nDone.")
    assert "<pre data-lang=\"python\"><code>if a &lt; b:\n    print('&lt;b&gt;')\n</code></pre>" in out
    assert "<p>Done.</p>" in out
    assert html("~~~\nx\n~~~~") == "<pre><code>x\n</code></pre>\n"
    assert html("```\na\n~~~\nb\n```") == "<pre><code>a\n~~~\nb\n</code></pre>\n"
    # A hostile info string cannot leave the attribute.
    assert 'data-lang="x&quot;"' in html('```x" onmouseover="alert(1)\ny\n```')


def test_inline_code_and_an_unclosed_fence():
    assert html("use `pip install x` then `<run>`.") == (
        "<p>use <code>pip install x</code> then <code>&lt;run&gt;</code>.</p>\n"
    )
    assert '<pre data-lang="sh"><code>ls -l</code></pre>' in html("before\n```sh\nls -l")


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "<iframe src=javascript:alert(1)></iframe>",
        '<a href="javascript:alert(1)">x</a>',
        "<svg onload=alert(1)>",
        "<style>body{display:none}</style>",
        '<div onclick="alert(1)">x</div>',
    ],
)
def test_raw_html_in_the_text_stays_text(text):
    out = html(text)
    assert "<" + text[1:] not in out and not re.search(r"<(script|img|iframe|svg|style|div)\b", out)
    assert "&lt;" in out


@pytest.mark.parametrize(
    "link",
    [
        "[x](javascript:alert(1))",
        "[x](JavaScript:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](jav&#x09;ascript:alert(1))",
        "[x](/logout)",
        "[x](//evil.example/x)",
        '[x](https://ok.example "t" onmouseover=alert(1))',
    ],
)
def test_links_keep_only_safe_absolute_targets(link):
    out = html(link)
    hrefs = re.findall(r'href="([^"]*)"', out)
    assert all(h.startswith(("http://", "https://", "mailto:")) for h in hrefs), out
    assert "onmouseover=" not in out.replace("onmouseover=alert(1))", "")  # never as an attribute


def test_safe_links_get_rel_and_images_become_links():
    out = html("[docs](https://example.org/a?b=1&c=2) and ![pic](https://example.org/p.png)")
    assert '<a href="https://example.org/a?b=1&amp;c=2" rel="noopener noreferrer nofollow">docs</a>' in out
    assert "<img" not in out and '<a href="https://example.org/p.png"' in out


def test_empty_text_has_no_markup():
    assert html("") == "" and html(None) == ""


def test_prompt_turns_for_strings_and_chat_messages():
    assert [(role, str(h)) for role, h in prompt_turns("Hi")] == [("user", "<p>Hi</p>\n")]
    chat = [{"role": "system", "content": "Be **brief**."}, {"role": "user", "content": "Hi"}]
    assert [(role, str(h)) for role, h in prompt_turns(chat)] == [
        ("system", "<p>Be <strong>brief</strong>.</p>\n"),
        ("user", "<p>Hi</p>\n"),
    ]


def test_size_note_counts_words():
    assert size_note("one two  three\nfour") == "4 words"
    assert size_note("one") == "1 word"
    assert size_note("") == "0 words"
