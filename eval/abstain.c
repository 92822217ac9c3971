// eval/abstain.c: the abstention rule (stated in eval/abstain.h). The
// patterns are POSIX extended regular expressions with GNU's \b (a word
// boundary), matched byte by byte: the Korean ones are literal UTF-8.
#include "eval/abstain.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// What may lack the answer: the documents, the context, the passages.
#define SOURCE "(documents?|context|passages?|excerpts?|information (provided|given)|(provided|given) information)"
#define SOURCE_TAIL "( provided| given| above| here| shown| supplied)?"
#define IN_SOURCE "\\b(in|from|within|by) (the|these|those|any of the|any) ((provided|given|above) )?" SOURCE "\\b"
#define SOURCE_KO "(문서|자료|본문|문맥|맥락|지문|주어진 정보|제공된 정보)"
// The rest of a clause: no , . ; ! ? (line breaks became ; in normalize).
#define CLAUSE "[^,.;!?]*"

static const char *const PATTERNS[] = {
    // "I don't know", "we cannot answer", "I'm unable to tell", "I am not able to say"
    "\\b(i|we)(( do not| don't| did not| didn't| cannot| can't| can not| could not| couldn't)|"
    "( am|'m| are|'re) (unable|not able) to) (know|answer|find|tell|say)\\b",
    // "this question cannot be answered"
    "\\b(cannot|can not|can't|could not|couldn't) be answered\\b",
    // "the documents do not contain", "the context provided doesn't actually say"
    "\\b" SOURCE SOURCE_TAIL " (do|does|did)( not|n't)( [a-z]+)? (contain|mention|include|provide|say|state|specify|"
    "cover|address|discuss|answer|hold|have|give|offer|explain|describe)",
    // "the documents contain no ...", "the passages say nothing ..."
    "\\b" SOURCE SOURCE_TAIL " (contains?|includes?|provides?|gives?|has|have|holds?|says?|mentions?|offers?) "
    "(no|nothing)\\b",
    // "there is no information about it in the documents", "nothing on this in any of the passages"
    "\\b(no|not any|nothing) (information|mention|answer|details|data|relevant|specific|about|on)\\b" CLAUSE IN_SOURCE,
    // "it is not mentioned in the documents", "isn't covered by the given context"
    "(\\bnot|n't) (mentioned|provided|found|covered|specified|stated|given|contained|included|addressed|discussed|"
    "available|present|answered|explained|described)\\b" CLAUSE IN_SOURCE,
    // "none of the documents"
    "\\bnone of the( provided| given)? " SOURCE "\\b",
    // "the answer is not in the documents", "the answer to the question is not provided"
    "\\banswer( to (this|the|your) question)? (is not|isn't|was not|wasn't) "
    "(in|provided|given|found|contained|mentioned|included|available)\\b",
    // 답이 없습니다, 답변이 없습니다, 답을 찾을 수 없습니다 (there is no answer, the answer cannot be found)
    "(답|답변|대답|정답)(이|은|는|을|를|도)? ?(찾을 수 |드릴 수 )?없",
    // 답변할 수 없습니다, 대답할 수 없습니다 (I cannot answer)
    "(답|답변|대답)(할|하기|드릴|해 드릴) 수 없",
    // 모르겠습니다 (I don't know)
    "모르겠",
    // 문서에는 관련 정보가 없습니다, 문서에서 이 내용을 찾을 수 없습니다 (the documents have no information on it)
    SOURCE_KO CLAUSE "(정보|내용|언급|설명|답|답변)(이|가|은|는|도|을|를)? ?(찾을 수 )?없",
    // 문서에 언급되어 있지 않습니다, 문서에 포함되지 않았습니다 (it is not mentioned in / included in the documents)
    SOURCE_KO CLAUSE "(포함|언급|명시|설명|기술|제공|나와|나타나|수록)[^ ,.;!?]* ?(있지 )?않",
};
enum { N_PATTERNS = sizeof PATTERNS / sizeof PATTERNS[0] };

// A copy of text with ASCII lower-cased, curly apostrophes (U+2018, U+2019)
// as ', line breaks as ; and other whitespace runs as one space; malloc'd.
static char *normalize(const char *text) {
    char *out = (char *)malloc(strlen(text) + 1);
    if (!out) return NULL;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0x98 || p[2] == 0x99)) {
            out[n++] = '\'';
            p += 2;
        } else if (*p == '\n' || *p == '\r') {
            out[n++] = ';';
        } else if (*p == ' ' || *p == '\t' || *p == '\f' || *p == '\v') {
            if (n == 0 || out[n - 1] != ' ') out[n++] = ' ';
        } else {
            out[n++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        }
    }
    out[n] = '\0';
    return out;
}

// 1 when the normalized answer holds the normalized known text, its
// surrounding spaces and final punctuation dropped (an empty one never matches).
static int contains_known(const char *answer, const char *known) {
    char *k = normalize(known);
    if (!k) return 0;
    size_t len = strlen(k);
    while (len > 0 && strchr(" .!?;", k[len - 1])) len--;
    k[len] = '\0';
    const char *start = k + strspn(k, " ");
    int found = *start && strstr(answer, start) != NULL;
    free(k);
    return found;
}

static int matches_pattern(const char *answer) {
    int found = 0;
    for (int i = 0; i < N_PATTERNS && !found; i++) {
        regex_t re;
        if (regcomp(&re, PATTERNS[i], REG_EXTENDED | REG_NOSUB) != 0) {
            fprintf(stderr, "eval_abstains: pattern %d does not compile\n", i);
            abort();
        }
        found = regexec(&re, answer, 0, NULL, 0) == 0;
        regfree(&re);
    }
    return found;
}

int eval_abstains(const char *answer, const char *const *known, int n_known) {
    char *text = normalize(answer);
    if (!text) return 0;
    int found = matches_pattern(text);
    for (int i = 0; i < n_known && !found; i++) found = contains_known(text, known[i]);
    free(text);
    return found;
}
