"""Reader fuzzing: arbitrary bytes and near-miss CSV/TSV never end a build with a traceback.

Every input either builds a bundle that verifies or fails with the package's own error
(a clear message; exit code 2 from the CLI), and nothing partial is ever published.
"""

import re
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from svdfaiss import bundle
from svdfaiss.builder import BuildConfig, build
from svdfaiss.errors import SvdfaissError

from .helpers import run_cli

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def build_or_refuse(content: bytes, suffix: str = ".csv") -> str:
    """Build from `content`; 'built' or 'refused', and the index dir holds nothing partial."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"log{suffix}"
        path.write_bytes(content)
        index_dir = Path(tmp) / "indexes"
        message = ""
        try:
            build(BuildConfig(input=path, model="m", index_dir=index_dir, k=2))
            outcome = "built"
        except SvdfaissError as exc:
            outcome, message = "refused", str(exc)
        assert outcome == "built" or message, "an error without a message"
        model_dir = index_dir / "m"
        assert not list(model_dir.glob(".tmp-*")), "a temporary folder was left behind"
        if outcome == "built":
            assert bundle.verify(model_dir / bundle.read_current(model_dir)) == []
        else:
            assert not (model_dir / "CURRENT").exists()
        return outcome


@FUZZ
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(content):
    event(build_or_refuse(content))


# Mostly ids from small pools, so that many logs are buildable; sometimes arbitrary text.
odd_ids = st.text(alphabet=string.ascii_letters + string.digits + "-_ ", min_size=1, max_size=6)
users = st.one_of(st.sampled_from([f"u{i}" for i in range(12)]), odd_ids)
items = st.one_of(st.sampled_from([f"0{i:03d}" for i in range(12)]), odd_ids)
numbers = st.one_of(st.sampled_from(["1", "2", "3", "4", "5"]),  # mostly usable values
                    st.sampled_from(["0", "-1", "3.5", "1e400", "nan", "inf", "", "x",
                                     "99999999999999999999999", "1,5", " 2 "]))


@st.composite
def near_miss_csv(draw) -> bytes:
    """A plausible log with the mistakes real exports make."""
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    header = draw(st.sampled_from(["user,item,rating", "user_id\titem_id", "", "a;b;c;d",
                                   '"user","item","rating","timestamp"']))
    rows = []
    for _ in range(draw(st.integers(0, 60))):
        fields = [draw(users), draw(items), draw(numbers)]
        if draw(st.booleans()):
            fields.append(draw(st.sampled_from(["1700000000", "yesterday", "-5", ""])))
        if draw(st.integers(0, 9)) == 0:
            fields = fields[: draw(st.integers(0, 2))]  # a short row
        if draw(st.integers(0, 9)) == 0:
            fields[0:1] = ['"' + fields[0] if fields else '"']  # an unclosed quote
        if draw(st.integers(0, 19)) == 0:
            fields.append("v" * draw(st.integers(1000, 200_000)))  # a very long field
        rows.append(delimiter.join(fields))
    lines = [header, *rows] if header else rows
    if draw(st.booleans()):  # mixed line endings within one file
        endings = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines),
                                max_size=len(lines)))
        text = "".join(line + end for line, end in zip(lines, endings, strict=True))
    else:
        text = newline.join(lines)
        if draw(st.booleans()):
            text += newline
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data  # a BOM
    if draw(st.integers(0, 9)) == 0:
        data = data.replace(b"u", b"\xe9", 3)  # latin-1 bytes, not UTF-8
    if draw(st.integers(0, 9)) == 0:
        data = data.replace(b"1", b"\x00", 1)  # a NUL
    return data


@FUZZ
@given(near_miss_csv(), st.sampled_from([".csv", ".tsv", ".txt"]))
def test_near_miss_csv_and_tsv(content, suffix):
    event(build_or_refuse(content, suffix))  # --hypothesis-show-statistics counts them


def test_the_cli_answers_bad_files_with_a_message_and_exit_2(tmp_path):
    cases = {
        "binary.csv": bytes(range(256)) * 8,
        "bom-crlf.csv": b"\xef\xbb\xbfuser,item\r\nu1,i1\r\nu2,i2\r\n",
        "latin1.csv": "user,item\nJos\xe9,caf\xe9\n".encode("latin-1"),
        "empty.csv": b"",
        "huge.csv": b"user,item,rating\nu1,i1,1e400\nu2,i2,99999999999999999999\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = run_cli(["build", str(path), "--model", "m", "--out", str(tmp_path / "ix")])
        assert result.returncode in (0, 2), (name, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        if result.returncode == 2:  # after any progress lines, the error names the problem
            message = re.sub(r"^([a-z ]+: \d+\.\d+ s\n)*", "", result.stderr)
            assert message.startswith("error: "), (name, result.stderr)
    assert not list((tmp_path / "ix").glob("*/.tmp-*"))
