from triptych.progress import progress_bar


def test_disabled_bar_counts_nothing_and_prints_nothing(capsys):
    with progress_bar(3, "work", enabled=False) as advance:
        for _ in range(3):
            advance()
    assert capsys.readouterr() == ("", "")


def test_enabled_bar_accepts_advances_and_leaves_no_output_behind(capsys):
    with progress_bar(4, "work", enabled=True) as advance:
        advance()
        advance(3)
    # transient: the finished bar is erased; nothing lands on stdout either way
    assert capsys.readouterr().out == ""
