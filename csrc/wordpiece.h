#pragma once
// WordPiece encoding of ASCII prompts on the host, for BERT-style tokenizers (the default encoder's,
// all-MiniLM-L6-v2): BertNormalizer (clean text, lowercase) -> BertPreTokenizer (whitespace, each ASCII
// punctuation mark a word) -> greedy longest-match WordPiece -> [CLS] ... [SEP], truncated to max_length.
// The reference is the `tokenizers` library itself (dnd_fast/wordpiece.py checks the configuration and
// sends every text this cannot take to it; tests/test_wordpiece.py compares the two).
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dnd_fast {

class WordPiece {
 public:
  // vocab[i] is the token of id i; pieces that continue a word start with `prefix` ("##").
  // `added`: texts holding any of these (case-insensitively) are refused: the reference matches them whole.
  WordPiece(std::vector<std::string> vocab, std::string prefix, int64_t unk, int64_t cls, int64_t sep,
            int64_t max_chars_per_word, bool lowercase, std::vector<std::string> added);

  // Appends the ids of one text to `out` and returns true; returns false, appending nothing, when the text
  // is not ASCII or holds an added token (the caller encodes it with the reference).
  bool encode(std::string_view text, int64_t max_length, std::vector<int64_t>& out) const;

 private:
  void append_word(std::string_view word, std::vector<int64_t>& out) const;
  bool holds_added(std::string_view text) const;

  std::vector<std::string> vocab_;  // owns the bytes the maps' keys view
  std::unordered_map<std::string_view, int64_t> words_;   // every token, as it starts a word
  std::unordered_map<std::string_view, int64_t> pieces_;  // tokens starting with the prefix, prefix cut
  std::vector<std::string> added_;                        // lowercased
  int64_t unk_, cls_, sep_, max_chars_;
  bool lowercase_;
};

}  // namespace dnd_fast
