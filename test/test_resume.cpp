// Never lose a user's work: ./train paused with --stop-at and continued with
// --resume writes bitwise the same losses and gradient norms as one
// uninterrupted run (same data order, dropout masks, AdamW state, schedule).
// Runs the real ./train (built by `make test`) for 3 short steps twice.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// The step, train_loss and grad_norm columns of a log.csv, one string per step.
static std::vector<std::string> logged_steps(const std::string &path) {
    std::ifstream in(path);
    std::vector<std::string> rows;
    std::string line;
    std::getline(in, line);   // header
    while (std::getline(in, line)) {
        std::stringstream fields(line);
        std::string step, loss, val, norm;
        std::getline(fields, step, ',');
        std::getline(fields, loss, ',');
        std::getline(fields, val, ',');
        std::getline(fields, norm, ',');
        rows.push_back(step + " " + loss + " " + norm);
    }
    return rows;
}

TEST_CASE("train: pause and resume reproduce an uninterrupted run bitwise") {
    char dir[] = "/tmp/qlora_resume_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    std::string common = "./train --steps 3 --grad-accum 1 --seq 160 --val-frac 0 --rank 4 --lora-dropout 0.1 --warmup 1";
    std::string quiet = " > " + d + "/out.txt 2>&1";
    REQUIRE(system((common + " --out " + d + "/full" + quiet).c_str()) == 0);
    REQUIRE(system((common + " --out " + d + "/part --stop-at 1" + quiet).c_str()) == 0);
    std::vector<std::string> paused = logged_steps(d + "/part/log.csv");
    CHECK(paused.size() == 1);
    REQUIRE(system((common + " --out " + d + "/part --resume " + d + "/part" + quiet).c_str()) == 0);
    std::vector<std::string> full = logged_steps(d + "/full/log.csv");
    std::vector<std::string> resumed = logged_steps(d + "/part/log.csv");
    REQUIRE(full.size() == 3);
    std::string full_text, resumed_text;
    for (const std::string &row : full) full_text += row + "\n";
    for (const std::string &row : resumed) resumed_text += row + "\n";
    CHECK_MESSAGE(resumed == full, "uninterrupted:\n", full_text, "paused + resumed:\n", resumed_text);
    // a checkpoint of another shape is refused with a clear message
    int status = system((common + " --rank 8 --out " + d + "/other --resume " + d + "/part" + quiet).c_str());
    CHECK(status != 0);
    std::ifstream out(d + "/out.txt");
    std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
    CHECK(text.find("rank 4") != std::string::npos);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}
