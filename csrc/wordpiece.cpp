// WordPiece on the host (see wordpiece.h). Each rule below is the `tokenizers` library's for an ASCII
// character: BertNormalizer's clean_text drops control characters (category Cc: 0x00-0x1F but tab, newline
// and carriage return, and 0x7F) and turns whitespace into spaces; BertPreTokenizer splits on whitespace and
// isolates every ASCII punctuation mark; WordPiece takes the longest vocabulary prefix, then the longest
// "##" piece, and makes the whole word [UNK] when some rest has no piece or the word is too long.
#include "wordpiece.h"

#include <algorithm>

namespace dnd_fast {
namespace {

bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_dropped(unsigned char c) { return (c < 0x20 && !is_space(c)) || c == 0x7F; }
bool is_punct(unsigned char c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}
char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

WordPiece::WordPiece(std::vector<std::string> vocab, std::string prefix, int64_t unk, int64_t cls, int64_t sep,
                     int64_t max_chars_per_word, bool lowercase, std::vector<std::string> added)
    : vocab_(std::move(vocab)), unk_(unk), cls_(cls), sep_(sep), max_chars_(max_chars_per_word),
      lowercase_(lowercase) {
  words_.reserve(vocab_.size());
  for (size_t id = 0; id < vocab_.size(); ++id) {
    const std::string_view token(vocab_[id]);
    words_.emplace(token, static_cast<int64_t>(id));  // emplace keeps the first id of a repeated token
    if (!prefix.empty() && token.size() > prefix.size() && token.substr(0, prefix.size()) == prefix) {
      pieces_.emplace(token.substr(prefix.size()), static_cast<int64_t>(id));
    }
  }
  for (auto& a : added) {
    if (a.empty()) continue;
    std::transform(a.begin(), a.end(), a.begin(), lower);
    added_.push_back(std::move(a));
  }
}

bool WordPiece::holds_added(std::string_view text) const {
  for (const auto& a : added_) {
    auto hit = std::search(text.begin(), text.end(), a.begin(), a.end(),
                           [](char x, char y) { return lower(x) == y; });
    if (hit != text.end()) return true;
  }
  return false;
}

void WordPiece::append_word(std::string_view word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  if (static_cast<int64_t>(word.size()) > max_chars_) {  // ASCII: bytes are characters
    out.push_back(unk_);
    return;
  }
  const size_t first = out.size();
  size_t start = 0;
  while (start < word.size()) {
    const auto& table = start == 0 ? words_ : pieces_;
    size_t end = word.size();
    int64_t id = -1;
    for (; end > start; --end) {
      auto hit = table.find(word.substr(start, end - start));
      if (hit != table.end()) {
        id = hit->second;
        break;
      }
    }
    if (id < 0) {
      out.resize(first);
      out.push_back(unk_);
      return;
    }
    out.push_back(id);
    start = end;
  }
}

bool WordPiece::encode(std::string_view text, int64_t max_length, std::vector<int64_t>& out) const {
  for (unsigned char c : text) {
    if (c >= 0x80) return false;
  }
  if (holds_added(text)) return false;
  const size_t first = out.size();
  const size_t keep = static_cast<size_t>(std::max<int64_t>(max_length - 2, 0));  // room for [CLS], [SEP]
  out.push_back(cls_);
  std::string word;
  auto flush = [&] {
    append_word(word, out);
    word.clear();
  };
  for (size_t i = 0; i < text.size() && out.size() - first - 1 < keep; ++i) {
    const unsigned char c = text[i];
    if (is_dropped(c)) continue;  // dropped, not a break: "a\x0bb" is one word
    if (is_space(c)) {
      flush();
    } else if (is_punct(c)) {
      flush();
      word.push_back(static_cast<char>(c));
      flush();
    } else {
      word.push_back(lowercase_ ? lower(static_cast<char>(c)) : static_cast<char>(c));
    }
  }
  flush();
  out.resize(std::min(out.size(), first + 1 + keep));
  out.push_back(sep_);
  return true;
}

}  // namespace dnd_fast
