// The abstention rule (eval/abstain.h) on test/fixtures/abstention.json:
// English and Korean answers that say the documents do not hold the answer
// (./prepare's no-oracle answers and paraphrases) abstain; answers that only
// hold a negation ("does not contain", 포함하지 않습니다) do not; the data's
// own abstention texts (a custom --no-oracle-answer) count when given.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "data/raft_build.h"
#include "eval/abstain.h"
#include "formats/json.h"

namespace {

const char *const FIXTURE = "test/fixtures/abstention.json";

// The strings of member key of object (an array), failing the test when it is missing.
std::vector<std::string> strings(const JsonValue *object, const char *key) {
    const JsonValue *array = json_get(object, key);
    REQUIRE_MESSAGE((array && array->type == JSON_ARRAY), FIXTURE, " lacks the array ", key);
    std::vector<std::string> out;
    for (size_t i = 0; i < array->count; i++) out.push_back(array->items[i].string);
    return out;
}

JsonValue *load_fixture() {
    char err[512];
    JsonValue *root = json_parse_file(FIXTURE, err, sizeof err);
    REQUIRE_MESSAGE(root, err);
    return root;
}

}  // namespace

TEST_CASE("abstain: ./prepare's no-oracle answers abstain, in both languages, with no texts given") {
    CHECK(eval_abstains(RAFT_NO_ORACLE_ANSWER_EN, nullptr, 0));
    CHECK(eval_abstains(RAFT_NO_ORACLE_ANSWER_KO, nullptr, 0));
}

TEST_CASE("abstain: the fixture's abstaining answers abstain, the others do not") {
    JsonValue *root = load_fixture();
    int abstaining = 0, answering = 0;
    for (const char *language : {"en", "ko"}) {
        for (const std::string &answer : strings(json_get(root, "abstain"), language)) {
            CHECK_MESSAGE(eval_abstains(answer.c_str(), nullptr, 0), "should abstain: ", answer);
            abstaining++;
        }
        for (const std::string &answer : strings(json_get(root, "answer"), language)) {
            CHECK_MESSAGE(!eval_abstains(answer.c_str(), nullptr, 0), "should not abstain: ", answer);
            answering++;
        }
    }
    CHECK(abstaining >= 25);
    CHECK(answering >= 15);
    json_free(root);
}

TEST_CASE("abstain: the data's own abstention texts count, compared without case, spacing or final punctuation") {
    JsonValue *root = load_fixture();
    const JsonValue *known = json_get(root, "known");
    std::vector<std::string> texts = strings(known, "texts");
    std::vector<const char *> pointers;
    for (const std::string &t : texts) pointers.push_back(t.c_str());
    for (const std::string &answer : strings(known, "abstain")) {
        CHECK_MESSAGE(eval_abstains(answer.c_str(), pointers.data(), (int)pointers.size()), answer);
        CHECK_MESSAGE(!eval_abstains(answer.c_str(), nullptr, 0), "abstains only through the texts: ", answer);
    }
    for (const std::string &answer : strings(known, "answer"))
        CHECK_MESSAGE(!eval_abstains(answer.c_str(), pointers.data(), (int)pointers.size()), answer);
    // an empty or punctuation-only text matches nothing
    const char *empty[2] = {"", " . "};
    CHECK(!eval_abstains("Debian is an operating system.", empty, 2));
    json_free(root);
}
