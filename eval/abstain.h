// eval/abstain.h: does an answer abstain, that is, say that the documents do
// not hold the answer? ./prepare trains the model to answer so when none of
// a sample's documents is the oracle (--no-oracle-answer, in English or
// Korean); ./evaluate counts how often a model does it on those samples (the
// abstention rate) and on the others (the false-abstention rate).
//
// The rule, in eval/abstain.c with each pattern commented: the answer is
// lower-cased (ASCII), curly apostrophes become ', and whitespace runs one
// space; it abstains when
//   1. it contains one of the known abstention texts given (./evaluate passes
//      the references of the data's no-oracle samples, so a custom
//      --no-oracle-answer counts; compared with their final punctuation
//      dropped), or
//   2. it matches one of the patterns below, in English or Korean: a first
//      person who cannot answer or does not know ("I don't know", "I cannot
//      answer", 모르겠습니다, 답변할 수 없습니다), "no answer" (답이 없습니다),
//      or a statement that the documents, the context or the passages lack it
//      ("the documents do not contain/mention/...", "none of the documents",
//      "there is no information ... in the documents", "not mentioned in the
//      context", 문서에는 관련 정보가 없습니다, 문서에 언급되어 있지 않습니다).
//      A negation alone does not abstain ("Debian does not contain non-free
//      software", 데비안은 비자유 소프트웨어를 포함하지 않습니다): the source
//      (documents, context, 문서 ...) must be what lacks the answer, within
//      one clause (no , . ; ! ? or line break between them).
// Tested on fixture answers, both languages, that do and do not abstain
// (test/test_abstain.cpp). Known limit: a Korean answer that cites 문서
// (documentation) and then says something has no 설명 (description) counts
// as abstaining.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// 1 when answer abstains by the rule above; known (n_known texts, may be
// NULL when n_known is 0) are the abstention texts of the data.
int eval_abstains(const char *answer, const char *const *known, int n_known);

#ifdef __cplusplus
}
#endif
