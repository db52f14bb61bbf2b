from mmreward.html_report import Report, plot_lines


def test_report_writes_tables_plots_and_copies_assets(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    plot = plot_lines({"loss": ([0, 1, 2], [1.0, 0.5, 0.25])}, outside / "loss.png", "loss")
    report = Report("Demo <run>", tmp_path / "report")
    report.heading("Models")
    report.table([{"model": "scalar", "acc": 0.75}, {"model": "yes<token>", "acc": 0.5}])
    report.image(plot, caption="training loss")
    path = report.write()
    page = path.read_text()
    assert "Demo &lt;run&gt;" in page
    assert "<td>0.7500</td>" in page and "yes&lt;token&gt;" in page
    assert "src='assets/loss.png'" in page
    assert (tmp_path / "report" / "assets" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_embeds_a_page_in_a_frame_with_a_link(tmp_path):
    trace = tmp_path / "trace.html"
    trace.write_text("<html><body>turn 1</body></html>")
    report = Report("r", tmp_path / "report")
    report.page(trace, caption="example trace")
    page = report.write().read_text()
    assert "<iframe src='assets/trace.html'" in page and "<a href='assets/trace.html'>open</a>" in page
    assert (tmp_path / "report" / "assets" / "trace.html").read_text() == trace.read_text()
