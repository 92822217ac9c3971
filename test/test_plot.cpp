// Tests for trainer/plot.c: nice ticks, line charts (gaps at NaN, empty series, the
// "no data yet" chart), bar charts with and without whiskers, escaping of
// text, the temporary file that is renamed into place, and unwritable paths.
// Each chart is checked to be well-formed: tags nest and close, and every
// '&' starts an entity.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/plot.h"

namespace {

// A fresh directory under /tmp, removed with the charts in it at scope exit.
struct PlotDir {
    std::string path;
    std::vector<std::string> files;
    PlotDir() {
        char name[] = "/tmp/qlora_plot_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    std::string file(const std::string &name) {
        files.push_back(path + "/" + name);
        return files.back();
    }
    ~PlotDir() {
        for (const std::string &f : files) std::remove(f.c_str());
        rmdir(path.c_str());
    }
};

std::string read_text(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

int count_of(const std::string &text, const std::string &part) {
    int count = 0;
    for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) count++;
    return count;
}

bool file_exists(const std::string &path) { return access(path.c_str(), F_OK) == 0; }

// Empty when the SVG is well-formed enough, else what is wrong: it is one
// <svg> element, every tag is closed by its own end tag, and every '&' is
// one of the four entities trainer/plot.c writes.
std::string svg_problem(const std::string &svg) {
    if (svg.rfind("<svg", 0) != 0) return "does not start with <svg";
    if (svg.size() < 7 || svg.compare(svg.size() - 7, 7, "</svg>\n") != 0) return "does not end with </svg>";
    std::vector<std::string> open;
    for (size_t i = 0; i < svg.size(); i++) {
        if (svg[i] == '&') {
            bool known = false;
            for (const char *entity : {"&amp;", "&lt;", "&gt;", "&quot;"})
                if (svg.compare(i, std::string(entity).size(), entity) == 0) known = true;
            if (!known) return "bare & at " + std::to_string(i);
        }
        if (svg[i] != '<') continue;
        size_t end = svg.find('>', i);
        if (end == std::string::npos) return "unclosed tag at " + std::to_string(i);
        std::string tag = svg.substr(i + 1, end - i - 1);
        if (tag.find('<') != std::string::npos) return "'<' inside a tag at " + std::to_string(i);
        if (tag[0] == '/') {
            if (open.empty() || open.back() != tag.substr(1)) return "unmatched </" + tag.substr(1) + ">";
            open.pop_back();
        } else if (tag.back() != '/') {
            open.push_back(tag.substr(0, tag.find(' ')));
        } else if (open.empty()) {
            return "element outside <svg>";
        }
        if (open.empty() && end + 2 != svg.size()) return "text after </svg>";
        i = end;
    }
    return open.empty() ? "" : "<" + open.back() + "> never closed";
}

// The "d" attribute of the n-th series path.
std::string series_path(const std::string &svg, int n) {
    size_t at = svg.find("<path class=\"series\"");
    for (int i = 0; i < n && at != std::string::npos; i++) at = svg.find("<path class=\"series\"", at + 1);
    REQUIRE(at != std::string::npos);
    size_t d = svg.find(" d=\"", at) + 4;
    return svg.substr(d, svg.find('"', d) - d);
}

void check_ticks(double lo, double hi) {
    CAPTURE(lo);
    CAPTURE(hi);
    double ticks[8];
    int count = nice_ticks(lo, hi, ticks, 8);
    CHECK(count >= 3);
    CHECK(count <= 8);
    for (int i = 0; i < count; i++) {
        CHECK(ticks[i] >= lo);
        CHECK(ticks[i] <= hi);
    }
    if (count < 2) return;
    double step = ticks[1] - ticks[0];
    for (int i = 2; i < count; i++) CHECK(ticks[i] - ticks[i - 1] == doctest::Approx(step));
    // step = m x 10^k with m in {1, 2, 5}
    double decade = std::pow(10.0, std::floor(std::log10(step)));
    double mantissa = step / decade;
    bool nice = std::fabs(mantissa - 1) < 1e-6 || std::fabs(mantissa - 2) < 1e-6 || std::fabs(mantissa - 5) < 1e-6;
    CHECK(nice);
    // and the ticks are multiples of it
    double units = ticks[0] / (std::round(mantissa) * decade);
    CHECK(std::fabs(units - std::round(units)) < 1e-6);
}

const double NaN = std::nan("");

}  // namespace

TEST_CASE("plot: nice ticks") {
    check_ticks(0.69, 1.87);
    check_ticks(0, 1e-3);
    check_ticks(0, 1);
    check_ticks(1, 1000);
    check_ticks(-3.2, 7.9);
    check_ticks(-0.0004, -0.0001);
    check_ticks(1000.0001, 1000.0002);
    check_ticks(2.0436, 2.9961);
    check_ticks(0, 12345);

    double ticks[8];
    REQUIRE(nice_ticks(0.69, 1.87, ticks, 8) == 6);   // 0.8, 1.0, ..., 1.8
    CHECK(ticks[0] == doctest::Approx(0.8));
    CHECK(ticks[5] == doctest::Approx(1.8));
    REQUIRE(nice_ticks(0, 1e-3, ticks, 8) == 6);      // 0, 2e-4, ..., 1e-3
    CHECK(ticks[0] == 0);
    CHECK(ticks[5] == 1e-3);
    CHECK(nice_ticks(0, 1, ticks, 3) <= 3);
    CHECK(nice_ticks(2.5, 2.5, ticks, 8) == 1);
    CHECK(ticks[0] == 2.5);
    CHECK(nice_ticks(1, 0, ticks, 8) == 0);
    CHECK(nice_ticks(NaN, 1, ticks, 8) == 0);
    CHECK(nice_ticks(0, INFINITY, ticks, 8) == 0);
    CHECK(nice_ticks(-1e308, 1e308, ticks, 8) == 0);
}

TEST_CASE("plot: line chart with two series, a NaN gap and a legend") {
    PlotDir dir;
    std::string path = dir.file("loss.svg");
    double steps[] = {0, 10, 20, 30, 40, 50};
    double train[] = {1.87, 1.42, NaN, 1.05, 0.88, 0.69};
    double val_steps[] = {25, 50};
    double val[] = {1.2, 0.95};
    PlotSeries series[] = {{"train", nullptr, steps, train, 6}, {"validation", "#d62728", val_steps, val, 2}};
    char err[256] = "";
    REQUIRE(svg_line_chart(path.c_str(), "Loss", "step", "loss", series, 2, err, sizeof err) == 0);
    CHECK(!file_exists(path + ".tmp"));
    std::string svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(svg.find(">Loss</text>") != std::string::npos);
    CHECK(svg.find(">step</text>") != std::string::npos);
    CHECK(svg.find(">loss</text>") != std::string::npos);
    CHECK(count_of(svg, "<path") == 2);
    CHECK(svg.find(">train</text>") != std::string::npos);
    CHECK(svg.find(">validation</text>") != std::string::npos);
    CHECK(svg.find("#d62728") != std::string::npos);
    CHECK(count_of(svg, "<circle") == 5 + 2);          // the NaN point has no marker
    CHECK(count_of(series_path(svg, 0), "M") == 2);     // the gap starts a second run
    CHECK(count_of(series_path(svg, 0), "L") == 3);
    CHECK(count_of(series_path(svg, 1), "M") == 1);
    CHECK(svg.find("nan") == std::string::npos);
    CHECK(svg.find("inf") == std::string::npos);
    CHECK(svg.find("no data yet") == std::string::npos);
}

TEST_CASE("plot: a chart is regenerated in place") {
    PlotDir dir;
    std::string path = dir.file("loss.svg");
    std::vector<double> steps, losses;
    char err[256] = "";
    for (int step = 1; step <= 300; step++) {   // more points than get markers
        steps.push_back(step);
        losses.push_back(2.0 / std::sqrt((double)step));
        if (step % 100 != 0) continue;
        PlotSeries train = {"train", nullptr, steps.data(), losses.data(), (int)steps.size()};
        std::string title = "step " + std::to_string(step);
        REQUIRE(svg_line_chart(path.c_str(), title.c_str(), "step", "loss", &train, 1, err, sizeof err) == 0);
        std::string svg = read_text(path);
        CHECK(svg_problem(svg) == "");
        CHECK(svg.find(">" + title + "</text>") != std::string::npos);
        CHECK(count_of(series_path(svg, 0), "L") == step - 1);
        CHECK(count_of(svg, "<circle") == (step <= 200 ? step : 0));
    }
}

TEST_CASE("plot: empty series, all-NaN series and no data yet") {
    PlotDir dir;
    char err[256] = "";
    double steps[] = {1, 2, 3};
    double train[] = {1.5, 1.2, 1.1};
    double nans[] = {NaN, NaN, NaN};

    // An empty validation series is in the legend but draws no line.
    std::string path = dir.file("some.svg");
    PlotSeries some[] = {{"train", nullptr, steps, train, 3}, {"validation", nullptr, nullptr, nullptr, 0}};
    REQUIRE(svg_line_chart(path.c_str(), "Loss", "step", "loss", some, 2, err, sizeof err) == 0);
    std::string svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(count_of(svg, "<path") == 1);
    CHECK(svg.find(">validation</text>") != std::string::npos);
    CHECK(svg.find("no data yet") == std::string::npos);

    // No point anywhere: axes, legend and "no data yet".
    path = dir.file("none.svg");
    PlotSeries none[] = {{"train", nullptr, nullptr, nullptr, 0}, {"validation", nullptr, steps, nans, 3}};
    REQUIRE(svg_line_chart(path.c_str(), "Loss", "step", "loss", none, 2, err, sizeof err) == 0);
    svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(count_of(svg, "<path") == 0);
    CHECK(count_of(svg, "<circle") == 0);
    CHECK(svg.find("no data yet") != std::string::npos);
    CHECK(svg.find(">train</text>") != std::string::npos);
    CHECK(svg.find(">validation</text>") != std::string::npos);
    CHECK(count_of(svg, "<line") >= 6);   // grid lines at the ticks of [0, 1]
    CHECK(svg.find("nan") == std::string::npos);

    // No series at all.
    path = dir.file("empty.svg");
    REQUIRE(svg_line_chart(path.c_str(), "Loss", "step", "loss", nullptr, 0, err, sizeof err) == 0);
    svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(svg.find("no data yet") != std::string::npos);

    // A single point still gets a frame around it.
    path = dir.file("one.svg");
    PlotSeries one = {"train", nullptr, steps, train, 1};
    REQUIRE(svg_line_chart(path.c_str(), "Loss", "step", "loss", &one, 1, err, sizeof err) == 0);
    svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(count_of(svg, "<circle") == 1);
    CHECK(svg.find("nan") == std::string::npos);
}

TEST_CASE("plot: text is escaped for XML") {
    PlotDir dir;
    std::string path = dir.file("escape.svg");
    double x[] = {0, 1}, y[] = {0, 1};
    PlotSeries series = {"<&>", "\"red\"", x, y, 2};
    char err[256] = "";
    REQUIRE(svg_line_chart(path.c_str(), "a <b> & \"c\"", "x<1", "y&z", &series, 1, err, sizeof err) == 0);
    std::string svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(svg.find("a &lt;b&gt; &amp; &quot;c&quot;") != std::string::npos);
    CHECK(svg.find("<b>") == std::string::npos);
    CHECK(svg.find(">&lt;&amp;&gt;</text>") != std::string::npos);
    CHECK(svg.find(">x&lt;1</text>") != std::string::npos);
    CHECK(svg.find(">y&amp;z</text>") != std::string::npos);
    CHECK(svg.find("stroke=\"&quot;red&quot;\"") != std::string::npos);
}

TEST_CASE("plot: bar charts with and without whiskers") {
    PlotDir dir;
    char err[256] = "";
    const char *labels[] = {"base", "qlora <r=8>", "qlora & more"};
    double values[] = {0.42, 0.61, NaN};
    double errors[] = {0.05, 0.03, 0.1};

    std::string path = dir.file("bars.svg");
    REQUIRE(svg_bar_chart(path.c_str(), "Accuracy", "exact match", labels, values, errors, 3, err, sizeof err) == 0);
    CHECK(!file_exists(path + ".tmp"));
    std::string svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(svg.find(">Accuracy</text>") != std::string::npos);
    CHECK(svg.find(">exact match</text>") != std::string::npos);
    CHECK(count_of(svg, "class=\"bar\"") == 2);       // no bar for the NaN value
    CHECK(count_of(svg, "class=\"whisker\"") == 2);
    CHECK(svg.find(">base</text>") != std::string::npos);
    CHECK(svg.find(">qlora &lt;r=8&gt;</text>") != std::string::npos);
    CHECK(svg.find(">qlora &amp; more</text>") != std::string::npos);
    CHECK(svg.find(">0.42</text>") != std::string::npos);
    CHECK(svg.find("nan") == std::string::npos);

    path = dir.file("plain.svg");
    double signed_values[] = {-0.5, 1.25, 0, 3, 2, 1, 0.5};
    const char *many[] = {"a", "b", "c", "d", "e", "f", "g"};
    REQUIRE(svg_bar_chart(path.c_str(), "Signed", "delta", many, signed_values, nullptr, 7, err, sizeof err) == 0);
    svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(count_of(svg, "class=\"bar\"") == 7);
    CHECK(count_of(svg, "class=\"whisker\"") == 0);
    CHECK(svg.find("rotate(-30)") != std::string::npos);   // many labels are slanted
    CHECK(svg.find("no data yet") == std::string::npos);

    path = dir.file("nobars.svg");
    REQUIRE(svg_bar_chart(path.c_str(), "Nothing", "score", nullptr, nullptr, nullptr, 0, err, sizeof err) == 0);
    svg = read_text(path);
    CHECK(svg_problem(svg) == "");
    CHECK(count_of(svg, "class=\"bar\"") == 0);
    CHECK(svg.find("no data yet") != std::string::npos);
}

TEST_CASE("plot: an unwritable path gives -1 and names the path") {
    const char *path = "/nonexistent_qlora_dir/chart.svg";
    double x[] = {0, 1}, y[] = {1, 2};
    PlotSeries series = {"train", nullptr, x, y, 2};
    char err[256] = "";
    CHECK(svg_line_chart(path, "Loss", "step", "loss", &series, 1, err, sizeof err) == -1);
    CHECK(std::string(err).find(path) != std::string::npos);

    const char *labels[] = {"a"};
    double values[] = {1};
    err[0] = '\0';
    CHECK(svg_bar_chart(path, "Bars", "y", labels, values, nullptr, 1, err, sizeof err) == -1);
    CHECK(std::string(err).find(path) != std::string::npos);

    // A directory where the chart should go: the rename fails, and the
    // temporary file is removed.
    PlotDir dir;
    std::string blocked = dir.path + "/blocked.svg";
    REQUIRE(mkdir(blocked.c_str(), 0700) == 0);
    err[0] = '\0';
    CHECK(svg_line_chart(blocked.c_str(), "Loss", "step", "loss", &series, 1, err, sizeof err) == -1);
    CHECK(std::string(err).find(blocked) != std::string::npos);
    CHECK(!file_exists(blocked + ".tmp"));
    rmdir(blocked.c_str());
}
