// test_serve.cpp: ./serve. In process (under the test build's sanitizers):
// serving/server.cpp's answers to every bad input (the request seeds of
// test/fuzz/corpus/request/ and the cases below) in OpenAI's error shape
// with the right status, streams that concatenate to the whole answer, stop
// sequences, a full queue's 429, adapters loaded and unloaded at run time.
// Then the real ./serve (built by `make test`) on 127.0.0.1 with a free
// port and the two adapters of test/fixtures/serve/, driven by curl: greedy
// answers equal ./generate --adapter's for each adapter and the base, the
// streamed chunks concatenate to the answer, the bad inputs over HTTP (413
// included), 32 concurrent requests across the two adapters, and Ctrl-C.
#include <doctest/doctest.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "formats/json.h"
#include "model.h"
#include "serving/server.h"
#include "serving/stop.h"
#include "test_util.h"

static const char *MODEL = "test/fixtures/serve/model";
static const char *ADAPTER_DIRS[] = {"test/fixtures/serve/faq", "test/fixtures/serve/all"};
static const char *ADAPTER_NAMES[] = {"faq", "all"};
// the fixture model's context (config.json's max_position_embeddings)
static const int CONTEXT = 256;

namespace {

struct Answer {
    int status = 0;
    std::string body;
    int retry_after = 0;
    bool streamed = false;
};

// A server on the fixture model with both adapters, as ./serve sets it up.
struct TestServer {
    Server *server = nullptr;
    TestServer(int workers, int queue) {
        ServerOptions options = {MODEL, {1, 1, 0, 0}, workers, queue, 0};
        char err[2048];
        server = server_create(&options, err, sizeof err);
        REQUIRE_MESSAGE(server, err);
        REQUIRE_MESSAGE(server_start(server, ADAPTER_DIRS, 2, err, sizeof err) == 0, err);
        for (int i = 0; i < 2; i++)
            REQUIRE_MESSAGE(server_add_adapter(server, ADAPTER_NAMES[i], ADAPTER_DIRS[i], err, sizeof err) == 0, err);
    }
    ~TestServer() { server_free(server); }
    // Sends a request; a stream is read to its end.
    Answer send(const char *method, const char *path, const std::string &body = "") {
        Reply reply;
        server_handle(server, method, path, body.data(), body.size(), NULL, &reply);
        Answer a;
        a.status = reply.status;
        a.retry_after = reply.retry_after;
        if (reply.stream) {
            a.streamed = true;
            char block[256];
            size_t n;
            while ((n = server_stream_read(reply.stream, block, sizeof block)) > 0) a.body.append(block, n);
            server_stream_close(reply.stream);
        } else {
            a.body.assign(reply.body ? reply.body : "", reply.body_len);
        }
        reply_free(&reply);
        return a;
    }
};

struct Json {
    JsonValue *value;
    explicit Json(const std::string &text) {
        char err[256];
        value = json_parse(text.data(), text.size(), err, sizeof err);
        REQUIRE_MESSAGE(value, "not JSON (", err, "): ", text);
    }
    ~Json() { json_free(value); }
};

// The error's message, after checking OpenAI's shape {"error": {"message", "type", "param", "code"}}.
std::string error_message(const Answer &a) {
    Json json(a.body);
    const JsonValue *error = json_get(json.value, "error");
    REQUIRE_MESSAGE(error, a.body);
    CHECK(json_get(error, "type"));
    CHECK(json_get(error, "param"));
    CHECK(json_get_number(error, "code", 0) == a.status);
    return json_get_string(error, "message", "");
}

// The answer's text: choices[0].message.content (chat) or choices[0].text.
std::string answer_text(const std::string &body) {
    Json json(body);
    const JsonValue *choices = json_get(json.value, "choices");
    REQUIRE_MESSAGE((choices && choices->count == 1), body);
    const JsonValue *message = json_get(&choices->items[0], "message");
    return message ? json_get_string(message, "content", "?") : json_get_string(&choices->items[0], "text", "?");
}

// The text of a stream's chunks joined, after checking the events' form and that it ends with [DONE].
std::string stream_text(const std::string &events, std::string *finish_reason = nullptr) {
    std::string text;
    size_t at = 0;
    bool done = false;
    while (at < events.size()) {
        size_t end = events.find("\n\n", at);
        REQUIRE_MESSAGE(end != std::string::npos, events);
        std::string event = events.substr(at, end - at);
        at = end + 2;
        if (event == ": keep-alive") continue;   // a comment, which clients skip
        REQUIRE_MESSAGE(event.rfind("data: ", 0) == 0, event);
        CHECK(!done);
        if (event == "data: [DONE]") { done = true; continue; }
        Json json(event.substr(6));
        const JsonValue *choices = json_get(json.value, "choices");
        REQUIRE(choices);
        if (choices->count == 0) continue;   // the usage chunk
        const JsonValue *choice = &choices->items[0], *delta = json_get(choice, "delta");
        text += delta ? json_get_string(delta, "content", "") : json_get_string(choice, "text", "");
        const JsonValue *finish = json_get(choice, "finish_reason");
        if (finish_reason && finish && finish->type == JSON_STRING) *finish_reason = finish->string;
    }
    CHECK(done);
    return text;
}

std::string chat_body(const char *model, const std::string &content, int max_tokens, const std::string &extra = "") {
    return std::string("{\"model\": \"") + model + "\", \"messages\": [{\"role\": \"user\", \"content\": \"" + content +
           "\"}], \"max_tokens\": " + std::to_string(max_tokens) + ", \"temperature\": 0" + extra + "}";
}

std::string file_text(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("serve: stop sequences end the text before them; a possible start is held back") {
    char *stops[] = {(char *)"END", (char *)"\n\n"};
    size_t safe;
    CHECK(stop_find("abc", 3, 0, stops, 2, &safe) == -1);
    CHECK(safe == 3);
    CHECK(stop_find("abcEN", 5, 0, stops, 2, &safe) == -1);
    CHECK(safe == 3);   // "EN" may become "END"
    CHECK(stop_find("abcENDx", 7, 5, stops, 2, &safe) == 3);
    CHECK(safe == 3);
    CHECK(stop_find("a\n\nEND", 6, 0, stops, 2, &safe) == 1);   // the first to occur
    CHECK(stop_find("ab\n", 3, 0, stops, 2, &safe) == -1);
    CHECK(safe == 2);
}

TEST_CASE("serve: every bad input gets OpenAI's error shape and status, naming the field or the limit") {
    TestServer t(1, 4);
    struct Case {
        const char *method, *path;
        std::string body;
        int status;
        const char *says;
    } cases[] = {
        {"POST", "/v1/chat/completions", "{\"model\": ", 400, "not valid JSON"},
        {"POST", "/v1/chat/completions", "[]", 400, "JSON object"},
        {"POST", "/v1/chat/completions", chat_body("nope", "hi", 2), 404, "'nope' does not exist; this server has: model, all, faq"},
        {"POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"" + std::string(CONTEXT * 2, 'x') + " " + std::string(CONTEXT * 4, 'y') + "\"}", 400, "maximum context length is 256 tokens"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", CONTEXT), 400, "maximum context length is 256 tokens"},
        {"POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"x\", \"temperature\": -1}", 400, "'temperature'"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"top_p\": 1.5"), 400, "'top_p'"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"seed\": \"x\""), 400, "'seed'"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"stop\": 3"), 400, "'stop'"},
        {"POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"x\", \"max_tokens\": -3}", 400, "'max_tokens'"},
        {"POST", "/v1/completions", "{\"model\": \"faq\"}", 400, "'prompt': is required"},
        // what the server does not implement is refused, not ignored: the answer would lack it
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"logprobs\": true"), 400, "'logprobs' asks for log probabilities, which this server does not implement"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]"), 400, "'tools' asks for tool calls"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"response_format\": {\"type\": \"json_object\"}"), 400, "'response_format' asks for a response format other than text"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"presence_penalty\": 1.5"), 400, "'presence_penalty'"},
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"logit_bias\": {\"5\": 100}"), 400, "'logit_bias'"},
        {"POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"x\", \"echo\": true}", 400, "'echo' asks for echoing the prompt"},
        {"POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"x\", \"best_of\": 3}", 400, "'best_of': only 1 candidate"},
        // a range names both ends; a huge max_tokens is the context's to refuse
        {"POST", "/v1/chat/completions", chat_body("faq", "hi", 2, ", \"seed\": 1e30"), 400, "'seed': must be an integer from -9223372036854775808 to 9223372036854775808"},
        {"POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"x\", \"max_tokens\": 1e300}", 400, "maximum context length is 256 tokens"},
        {"GET", "/v1/chat/completions", "", 405, "does not take GET"},
        {"GET", "/v2/nothing", "", 404, "no route"},
        {"POST", "/v1/adapters", "{\"name\": \"x\"}", 400, "\"path\""},
        {"POST", "/v1/adapters", "{\"name\": \"faq\", \"path\": \"test/fixtures/serve/faq\"}", 409, "'faq' is in use"},
        {"POST", "/v1/adapters", "{\"name\": \"bad/name\", \"path\": \"test/fixtures/serve/faq\"}", 400, "adapter name"},
        {"POST", "/v1/adapters", "{\"name\": \"other\", \"path\": \"test/fixtures/merge/a0\"}", 400, "adapter_model.safetensors: tensor"},
        {"POST", "/v1/adapters", "{\"name\": \"none\", \"path\": \"/no/such/dir\"}", 400, "/no/such/dir/adapter_config.json"},
        {"DELETE", "/v1/adapters/nope", "", 404, "'nope' does not exist"},
        {"DELETE", "/v1/adapters/model", "", 400, "is the base model"},
    };
    for (const Case &k : cases) {
        std::string path = k.path;
        CAPTURE(path);
        CAPTURE(k.body.substr(0, 200));
        Answer a = t.send(k.method, k.path, k.body);
        CHECK(a.status == k.status);
        CHECK_MESSAGE(error_message(a).find(k.says) != std::string::npos, a.body);
    }
    // the request seeds: valid ones answer 200 (or 404: an adapter name this server lacks), the rest 4xx
    for (const auto &entry : std::filesystem::directory_iterator("test/fuzz/corpus/request")) {
        std::string body = file_text(entry.path()), name = entry.path().filename();
        for (const char *path : {"/v1/chat/completions", "/v1/completions"}) {
            std::string route = path;
            CAPTURE(name);
            CAPTURE(route);
            Answer a = t.send("POST", path, body);
            if (name.rfind("bad_", 0) == 0) CHECK(a.status == 400);
            if (a.status != 200) CHECK(!error_message(a).empty());
        }
    }
}

TEST_CASE("serve: those fields at their defaults are accepted; unseeded requests sample apart, seeded ones alike") {
    TestServer t(2, 8);
    std::string defaults = ", \"logprobs\": false, \"tools\": [], \"tool_choice\": \"none\", \"response_format\": "
                           "{\"type\": \"text\"}, \"presence_penalty\": 0, \"frequency_penalty\": null, \"best_of\": 1";
    CHECK(t.send("POST", "/v1/chat/completions", chat_body("faq", "hi", 2, defaults)).status == 200);
    // sampled (temperature 1) without a seed: four requests in the same second are not all one answer
    std::string sampled = "{\"model\": \"model\", \"prompt\": \"hello\", \"max_tokens\": 8, \"temperature\": 1}";
    std::vector<std::string> answers;
    for (int i = 0; i < 4; i++) answers.push_back(answer_text(t.send("POST", "/v1/completions", sampled).body));
    CHECK_MESSAGE((answers[0] != answers[1] || answers[0] != answers[2] || answers[0] != answers[3]), answers[0]);
    // the same seed, the same answer; OpenAI's largest seed (2^63 - 1) is one
    for (const char *seed : {"7", "9223372036854775807", "-9223372036854775808"}) {
        std::string seeded = sampled.substr(0, sampled.size() - 1) + ", \"seed\": " + seed + "}";
        Answer first = t.send("POST", "/v1/completions", seeded);
        REQUIRE_MESSAGE(first.status == 200, first.body);
        CHECK(answer_text(first.body) == answer_text(t.send("POST", "/v1/completions", seeded).body));
    }
}

TEST_CASE("serve: a stream's chunks concatenate to the whole answer; stop sequences cut both") {
    TestServer t(2, 8);
    for (const char *model : {"faq", "all", "model"}) {
        std::string name = model;
        CAPTURE(name);
        Answer whole = t.send("POST", "/v1/chat/completions", chat_body(model, "hello there", 12));
        REQUIRE(whole.status == 200);
        std::string text = answer_text(whole.body);
        CHECK(!text.empty());
        std::string finish;
        Answer streamed = t.send("POST", "/v1/chat/completions",
                                 chat_body(model, "hello there", 12, ", \"stream\": true, \"stream_options\": {\"include_usage\": true}"));
        REQUIRE(streamed.streamed);
        CHECK(stream_text(streamed.body, &finish) == text);
        CHECK(streamed.body.find("\"completion_tokens\": ") != std::string::npos);
        // a stop sequence from the middle of the answer ends it there (two ASCII letters or digits of it)
        size_t at = text.size() / 3;
        while (at + 1 < text.size() && !(isalnum((unsigned char)text[at]) && isalnum((unsigned char)text[at + 1]))) at++;
        if (at + 1 < text.size()) {
            std::string stop = text.substr(at, 2), extra = ", \"stop\": [\"" + stop + "\"]";
            std::string expected = text.substr(0, text.find(stop));
            Answer cut = t.send("POST", "/v1/chat/completions", chat_body(model, "hello there", 12, extra));
            CHECK(answer_text(cut.body) == expected);
            CHECK(cut.body.find("\"finish_reason\": \"stop\"") != std::string::npos);
            Answer cut_stream = t.send("POST", "/v1/chat/completions", chat_body(model, "hello there", 12, extra + ", \"stream\": true"));
            CHECK(stream_text(cut_stream.body, &finish) == expected);
            CHECK(finish == "stop");
        }
    }
    // the adapters change the answer
    CHECK(answer_text(t.send("POST", "/v1/completions", "{\"model\": \"faq\", \"prompt\": \"hello\", \"temperature\": 0}").body) !=
          answer_text(t.send("POST", "/v1/completions", "{\"model\": \"all\", \"prompt\": \"hello\", \"temperature\": 0}").body));
}

TEST_CASE("serve: a full queue answers 429 with Retry-After; adapters load and unload at run time") {
    TestServer t(1, 1);
    server_set_paused(t.server, 1);
    Reply waiting;
    std::string body = chat_body("faq", "hello", 4, ", \"stream\": true");
    server_handle(t.server, "POST", "/v1/chat/completions", body.data(), body.size(), NULL, &waiting);
    REQUIRE(waiting.stream);   // queued: the only place
    Answer refused = t.send("POST", "/v1/chat/completions", body);
    CHECK(refused.status == 429);
    CHECK(refused.retry_after >= 1);
    CHECK(error_message(refused).find("busy") != std::string::npos);
    // unloading an adapter that a queued request uses: the request keeps it
    CHECK(t.send("DELETE", "/v1/adapters/faq").status == 200);
    CHECK(t.send("POST", "/v1/chat/completions", chat_body("faq", "hello", 4)).status == 404);
    server_set_paused(t.server, 0);
    std::string events;
    char block[64];
    size_t n;
    while ((n = server_stream_read(waiting.stream, block, sizeof block)) > 0) events.append(block, n);
    server_stream_close(waiting.stream);
    CHECK(!stream_text(events).empty());
    // loaded again under another name: the same answers
    Answer loaded = t.send("POST", "/v1/adapters", "{\"name\": \"faq2\", \"path\": \"test/fixtures/serve/faq\"}");
    CHECK(loaded.status == 200);
    Json models(t.send("GET", "/v1/models").body);
    CHECK(json_get(models.value, "data")->count == 3);
    // one model by its id (OpenAI's models.retrieve): an adapter names its base as parent
    Answer one = t.send("GET", "/v1/models/faq2");
    CHECK(one.status == 200);
    Json entry(one.body);
    CHECK(std::string(json_get_string(entry.value, "id", "")) == "faq2");
    CHECK(std::string(json_get_string(entry.value, "object", "")) == "model");
    CHECK(json_get_string(entry.value, "parent", NULL) != NULL);
    Answer missing = t.send("GET", "/v1/models/nope");
    CHECK(missing.status == 404);
    CHECK_MESSAGE(missing.body.find("The model 'nope' does not exist; this server has: ") != std::string::npos,
                  missing.body);
    CHECK(t.send("POST", "/v1/models/faq2").status == 405);
    CHECK(stream_text(events) == answer_text(t.send("POST", "/v1/chat/completions", chat_body("faq2", "hello", 4)).body));
    CHECK(t.send("GET", "/health").body == "{\"status\": \"ok\"}");
}

TEST_CASE("serve: a whole answer whose client hangs up is not generated; a waiting stream sends keep-alives") {
    TestServer t(1, 4);
    struct Client {
        std::atomic<int> polls{0}, gone_after{-1};   // gone from that poll on (-1: never)
        static int gone(void *context) {
            Client *c = (Client *)context;
            int poll = c->polls++;
            return c->gone_after.load() >= 0 && poll >= c->gone_after.load();
        }
    };
    const int max_tokens = 16;
    std::string body = chat_body("faq", "hello", max_tokens);
    auto completion_tokens = [](const Reply &reply) {
        Json json(std::string(reply.body ? reply.body : "", reply.body_len));
        return (int)json_get_number(json_get(json.value, "usage"), "completion_tokens", -1);
    };
    // queued: the client leaves before a worker takes it; nothing is generated
    server_set_paused(t.server, 1);
    Client queued;
    queued.gone_after = 0;
    ClientWatch watch = {Client::gone, &queued, 0};
    Reply reply;
    std::thread paused_resume([&] {
        // the client asked once (or, if it never is, 5 s: the answer then has every token)
        for (int ms = 0; queued.polls.load() < 1 && ms < 5000; ms += 10)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        server_set_paused(t.server, 0);
    });
    server_handle(t.server, "POST", "/v1/chat/completions", body.data(), body.size(), &watch, &reply);
    paused_resume.join();
    REQUIRE(reply.status == 200);
    CHECK(completion_tokens(reply) == 0);
    reply_free(&reply);
    // a client that stays gets every token; one watched but never gone, too
    Client staying;
    watch.context = &staying;
    server_handle(t.server, "POST", "/v1/chat/completions", body.data(), body.size(), &watch, &reply);
    REQUIRE(reply.status == 200);
    int all = completion_tokens(reply);
    reply_free(&reply);
    CHECK(all > 0);
    // a stream that waits sends keep-alive comments meanwhile; they are no part of the answer
    server_set_paused(t.server, 1);
    watch.keepalive_ms = 20;
    std::string stream_body = chat_body("faq", "hello", max_tokens, ", \"stream\": true");
    server_handle(t.server, "POST", "/v1/chat/completions", stream_body.data(), stream_body.size(), &watch, &reply);
    REQUIRE(reply.stream);
    std::thread resume_later([&] {   // after 20 ms the first read is a keep-alive; were it not, it would wait for this
        std::this_thread::sleep_for(std::chrono::milliseconds(1000));
        server_set_paused(t.server, 0);
    });
    char block[256];
    size_t n = server_stream_read(reply.stream, block, sizeof block);
    CHECK(std::string(block, n) == ": keep-alive\n\n");
    resume_later.join();
    std::string events(block, n);
    while ((n = server_stream_read(reply.stream, block, sizeof block)) > 0) events.append(block, n);
    server_stream_close(reply.stream);
    CHECK(stream_text(events) == answer_text(t.send("POST", "/v1/chat/completions", body).body));
}

// A copy of the faq adapter in dir whose config records the base it was trained on, as ./train writes it.
static std::string adapter_with_record(const std::string &dir, const char *quant, uint64_t model_hash) {
    std::string copy = dir + "/" + quant;
    REQUIRE(system(("cp -r " + std::string(ADAPTER_DIRS[0]) + " " + copy).c_str()) == 0);
    std::string config = file_text(copy + "/adapter_config.json");
    char record[160];
    snprintf(record, sizeof record, "{\n  \"qlora_c_base\": {\"quant\": \"%s\", \"double_quant\": true, "
             "\"model_weights_hash\": \"%016llx\"},", quant, (unsigned long long)model_hash);
    config.replace(0, 1, record);
    std::ofstream(copy + "/adapter_config.json") << config;
    return copy;
}

TEST_CASE("serve: an adapter loaded at run time is served on the base --quant chose, or with a warning naming both") {
    char dir[] = "/tmp/qlora_serve_base_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char err[2048];
    Model loaded;
    REQUIRE(model_load(&loaded, MODEL, err, sizeof err) == 0);
    uint64_t hash = model_weights_hash(&loaded);
    model_free(&loaded);
    std::string nf4 = adapter_with_record(dir, "nf4", hash), other = adapter_with_record(dir, "none", hash + 1);
    std::string request = "{\"model\": \"a\", \"prompt\": \"hello there\", \"max_tokens\": 12, \"temperature\": 0}";
    // the answer with the adapter given at the start (its record: an NF4 round trip)
    std::string expected;
    {
        TestServer t(1, 4);
        REQUIRE(server_add_adapter(t.server, "a", nf4.c_str(), err, sizeof err) == 0);
        expected = answer_text(t.send("POST", "/v1/completions", request).body);
    }
    for (int quant_given : {1, 0}) {
        CAPTURE(quant_given);
        ServerOptions options = {MODEL, {1, 1, quant_given, 0}, 1, 4, 0};
        Server *server = server_create(&options, err, sizeof err);
        REQUIRE_MESSAGE(server, err);
        REQUIRE_MESSAGE(server_start(server, nullptr, 0, err, sizeof err) == 0, err);
        Reply reply;
        std::string load = "{\"name\": \"a\", \"path\": \"" + nf4 + "\"}";
        server_handle(server, "POST", "/v1/adapters", load.data(), load.size(), NULL, &reply);
        std::string body(reply.body, reply.body_len);
        reply_free(&reply);
        CHECK(reply.status == 200);
        server_handle(server, "POST", "/v1/completions", request.data(), request.size(), NULL, &reply);
        std::string answer = answer_text(std::string(reply.body, reply.body_len));
        reply_free(&reply);
        if (quant_given) {   // --quant nf4 without adapters: the base adapters loaded later were trained on
            CHECK_MESSAGE(body == "{\"loaded\": \"a\"}", body);
            CHECK(answer == expected);
        } else {             // no --quant, no adapter: the base as loaded, and the adapter says it wants another
            CHECK_MESSAGE(body.find("trained on the base of --quant nf4 --double-quant 1, but it is merged onto "
                                    "--quant none") != std::string::npos, body);
        }
        load = "{\"name\": \"b\", \"path\": \"" + other + "\"}";
        server_handle(server, "POST", "/v1/adapters", load.data(), load.size(), NULL, &reply);
        body.assign(reply.body, reply.body_len);
        reply_free(&reply);
        CHECK_MESSAGE(body.find("the adapter was trained on another model") != std::string::npos, body);
        server_free(server);
    }
    REQUIRE(system(("rm -rf " + std::string(dir)).c_str()) == 0);
}

// ---- the real ./serve over HTTP -------------------------------------------------

namespace {

// stdout of a shell command.
std::string shell(const std::string &command) {
    std::string out;
    run_shell(command, &out);
    return out;
}

// Both programs run on the CPU (--device cpu), also on a machine with a GPU:
// the fixture's weights (std 0.5) amplify 16-bit rounding until greedy answers
// part, so the GPU forward is compared with the CPU's on well-scaled models
// instead (test/gpu/test_gpu_serve.cu).
static const char *DEVICE = "cpu";

// ./generate's greedy answer (its trailing newline removed).
std::string generate(const char *adapter_dir, const std::string &prompt, bool chat, int max_new) {
    std::string command = std::string("./generate --device ") + DEVICE + " --model " + MODEL + (adapter_dir ? std::string(" --adapter ") + adapter_dir : "") +
                          (chat ? " --chat" : "") + " --prompt '" + prompt + "' --max-new " + std::to_string(max_new) +
                          " 2>/dev/null";
    std::string out = shell(command);
    REQUIRE(!out.empty());
    out.pop_back();
    return out;
}

struct ServeProcess {
    pid_t pid = -1;
    std::string log, url;
    ServeProcess(const std::vector<std::string> &extra) {
        log = "/tmp/qlora_serve_test_" + std::to_string(getpid()) + ".log";
        std::vector<std::string> argv = {"./serve", "--device", DEVICE, "--model", MODEL, "--port", "0", "--adapter",
                                         std::string("faq=") + ADAPTER_DIRS[0], "--adapter", std::string("all=") + ADAPTER_DIRS[1]};
        argv.insert(argv.end(), extra.begin(), extra.end());
        REQUIRE_MESSAGE(access("./serve", X_OK) == 0, "./serve is not built (make serve)");
        pid = fork();
        if (pid == 0) {
            FILE *out = freopen(log.c_str(), "w", stderr);
            (void)out;
            std::vector<char *> args;
            for (const std::string &a : argv) args.push_back(const_cast<char *>(a.c_str()));
            args.push_back(nullptr);
            execv(args[0], args.data());
            _exit(127);
        }
        // the startup line names the port
        for (int tries = 0; tries < 600 && url.empty(); tries++) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            std::string text = file_text(log);
            size_t at = text.find("listening on ");
            if (at != std::string::npos && text.find('\n', at) != std::string::npos)
                url = text.substr(at + 13, text.find('\n', at) - at - 13);
        }
        REQUIRE_MESSAGE(!url.empty(), file_text(log));
    }
    // Ctrl-C; its exit status.
    int stop() {
        kill(pid, SIGINT);
        int status = 0;
        waitpid(pid, &status, 0);
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    ~ServeProcess() {
        if (pid > 0) stop();
        std::remove(log.c_str());
    }
    // curl's body, and the status code on the last line
    std::string curl(const std::string &path, const std::string &body, const std::string &options = "") {
        std::string file = log + ".body";
        std::ofstream(file, std::ios::binary) << body;
        return shell("curl -sS -N " + options + " -H 'Content-Type: application/json' --data-binary @" + file +
                     " -w '\\n%{http_code}' " + url + path);
    }
};

// Splits curl's output into the body and the status.
std::pair<std::string, int> body_status(const std::string &out) {
    size_t newline = out.rfind('\n');
    REQUIRE(newline != std::string::npos);
    return {out.substr(0, newline), atoi(out.c_str() + newline + 1)};
}

}  // namespace

TEST_CASE("serve: ./serve over HTTP answers as ./generate does, streams, refuses bad input, serves 32 at once") {
    REQUIRE_MESSAGE(system("curl --version > /dev/null 2>&1") == 0, "curl is needed (apt-get install curl)");
    setenv("OMP_NUM_THREADS", "1", 1);
    ServeProcess serve({"--workers", "2", "--queue", "64", "--max-body", "65536", "--timeout", "1"});
    const int max_new = 10;
    const char *prompt = "hello there";
    std::string expected[2];
    for (int i = 0; i < 2; i++) {
        std::string name = ADAPTER_NAMES[i];
        CAPTURE(name);
        expected[i] = generate(ADAPTER_DIRS[i], prompt, true, max_new);
        auto chat = body_status(serve.curl("/v1/chat/completions", chat_body(ADAPTER_NAMES[i], prompt, max_new)));
        REQUIRE(chat.second == 200);
        CHECK(answer_text(chat.first) == expected[i]);
        auto streamed = body_status(serve.curl("/v1/chat/completions", chat_body(ADAPTER_NAMES[i], prompt, max_new, ", \"stream\": true")));
        CHECK(stream_text(streamed.first) == expected[i]);
        std::string body = std::string("{\"model\": \"") + ADAPTER_NAMES[i] + "\", \"prompt\": \"" + prompt +
                           "\", \"max_tokens\": " + std::to_string(max_new) + ", \"temperature\": 0}";
        CHECK(answer_text(body_status(serve.curl("/v1/completions", body)).first) ==
              generate(ADAPTER_DIRS[i], prompt, false, max_new));
    }
    CHECK(expected[0] != expected[1]);
    // bad input over HTTP
    auto malformed = body_status(serve.curl("/v1/chat/completions", "{\"model\""));
    CHECK(malformed.second == 400);
    auto unknown = body_status(serve.curl("/v1/chat/completions", chat_body("nope", prompt, 2)));
    CHECK(unknown.second == 404);
    CHECK(unknown.first.find("all, faq") != std::string::npos);
    auto huge = body_status(serve.curl("/v1/completions", "{\"model\": \"faq\", \"prompt\": \"" + std::string(70000, 'x') + "\"}"));
    CHECK(huge.second == 413);
    CHECK(huge.first.find("65536") != std::string::npos);
    auto long_prompt = body_status(serve.curl("/v1/completions", "{\"model\": \"faq\", \"prompt\": \"" + std::string(3000, 'x') + " " + std::string(3000, 'z') + "\"}"));
    CHECK(long_prompt.second == 400);
    CHECK(long_prompt.first.find("256") != std::string::npos);
    std::string models = body_status(shell("curl -sS -w '\\n%{http_code}' " + serve.url + "/v1/models")).first;
    // a connection that sends nothing is closed after --timeout 1 (answers that take longer are not cut: below)
    std::string host_port = serve.url.substr(serve.url.find("//") + 2);
    std::string idle = shell("bash -c 'exec 3<>/dev/tcp/" + host_port.substr(0, host_port.find(':')) + "/" +
                             host_port.substr(host_port.find(':') + 1) +
                             "; start=$(date +%s%N); timeout 30 cat <&3; echo $(( ($(date +%s%N) - start) / 1000000 ))'");
    int idle_ms = atoi(idle.c_str());
    CHECK_MESSAGE((idle_ms >= 900 && idle_ms < 10000), idle);
    CHECK(models.find("\"faq\"") != std::string::npos);

    // 32 requests at once, alternating adapters
    const int n_clients = 32;
    std::string dir = serve.log + ".clients";
    std::filesystem::create_directories(dir);
    std::string script;
    for (int k = 0; k < n_clients; k++) {
        std::string file = dir + "/" + std::to_string(k);
        std::ofstream(file + ".json") << chat_body(ADAPTER_NAMES[k % 2], prompt, max_new);
        script += "curl -sS --data-binary @" + file + ".json " + serve.url + "/v1/chat/completions > " + file + ".out & ";
    }
    shell(script + "wait");
    for (int k = 0; k < n_clients; k++) {
        CAPTURE(k);
        CHECK(answer_text(file_text(dir + "/" + std::to_string(k) + ".out")) == expected[k % 2]);
    }
    std::filesystem::remove_all(dir);
    std::remove((serve.log + ".body").c_str());
    std::string log = file_text(serve.log);
    CHECK(serve.stop() == 0);
    log = file_text(serve.log);
    CHECK(log.find("model=faq prompt_tokens=13 completion_tokens=10") != std::string::npos);
    CHECK(log.find("serve: stopped") != std::string::npos);
}

TEST_CASE("serve: more --workers than the system can start threads for is a message and status 1, not an abort") {
    // 1.5 GB of address space holds some 180 threads' stacks, not 100000 (it aborted in std::thread before)
    std::string out = shell("timeout 120 sh -c 'ulimit -v 1500000; exec ./serve --device cpu --model " + std::string(MODEL) +
                            " --port 0 --workers 100000' 2>&1; echo \"status $?\"");
    CHECK_MESSAGE(out.find("serve: --workers 100000: the system cannot start that many threads") != std::string::npos, out);
    CHECK_MESSAGE(out.find("status 1") != std::string::npos, out);
}
