#include "executor/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "sim/json_reader.hpp"

namespace loom::exec {

namespace fs = std::filesystem;

// The header is written in host byte order; every platform loom builds for is little-endian.
static_assert(std::endian::native == std::endian::little, "checkpoint files are little-endian");

namespace {

constexpr char kMagic[8] = {'L', 'O', 'O', 'M', 'C', 'K', 'P', '2'};
constexpr int kHeaderWords = 7;  // step, world, rank, fingerprint, weights, m, v
constexpr int64_t kHeaderBytes = sizeof kMagic + kHeaderWords * 8;
constexpr const char* kFormat = "loom checkpoint";
constexpr int64_t kVersion = 2;
constexpr const char* kIndexName = "checkpoint.json";
constexpr const char* kDirPrefix = "step-";

std::string errno_text() { return std::strerror(errno); }

Group world_group(const Comm& comm) {
  Group g;
  g.kind = GroupKind::world;
  for (int r = 0; r < comm.world(); ++r) g.ranks.push_back(r);
  g.index = comm.rank();
  return g;
}

// Rank `root`'s text on every rank (at most `max_chars`): one character per double, summed over
// the world while every other rank adds zeros.
Expected<std::string> share_text(Comm& comm, int root, const std::string& text, size_t max_chars) {
  std::vector<double> buf(max_chars, 0.0);
  if (comm.rank() == root)
    for (size_t i = 0; i < std::min(text.size(), max_chars); ++i) buf[i] = static_cast<unsigned char>(text[i]);
  if (auto st = comm.all_reduce(world_group(comm), buf.data(), static_cast<int64_t>(buf.size())); !st) return st.error();
  std::string out;
  for (double c : buf) {
    if (c == 0) break;
    out += static_cast<char>(static_cast<unsigned char>(c));
  }
  return out;
}

void maybe_die(const SaveFault& fault, int64_t rank, const char* point) {
  if (fault.rank == rank && fault.point == point) std::raise(SIGKILL);
}

// Writes through one file descriptor, hashing what it writes; a SaveFault on `bytes` ends the
// process once exactly that many bytes are in the file.
class HashedWriter {
 public:
  HashedWriter(int fd, const SaveFault& fault, int64_t rank) : fd_(fd), fault_(fault), rank_(rank) {}
  Status put(const void* data, int64_t n, bool hashed = true) {
    const char* p = static_cast<const char*>(data);
    const bool dies = fault_.rank == rank_ && fault_.bytes >= 0 && written_ + n > fault_.bytes;
    const int64_t todo = dies ? fault_.bytes - written_ : n;
    if (hashed) hash_ = fnv1a64(p, static_cast<size_t>(n), hash_);
    for (int64_t done = 0; done < todo;) {
      const ssize_t w = ::write(fd_, p + done, static_cast<size_t>(std::min<int64_t>(todo - done, int64_t{1} << 30)));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return Error{errno_text()};
      done += w;
    }
    written_ += todo;
    if (dies) std::raise(SIGKILL);
    return ok_status();
  }
  uint64_t hash() const { return hash_; }

 private:
  int fd_;
  const SaveFault& fault_;
  int64_t rank_;
  int64_t written_ = 0;
  uint64_t hash_ = kFnv1a64Offset;
};

Status read_exact(int fd, void* data, int64_t n) {
  char* p = static_cast<char*>(data);
  for (int64_t done = 0; done < n;) {
    const ssize_t r = ::read(fd, p + done, static_cast<size_t>(std::min<int64_t>(n - done, int64_t{1} << 30)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Error{errno_text()};
    if (r == 0) return Error{"ends early"};
    done += r;
  }
  return ok_status();
}

Status fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return make_error(path, "cannot be opened to sync: " + errno_text());
  const int rc = ::fsync(fd);
  const std::string why = errno_text();
  ::close(fd);
  if (rc != 0) return make_error(path, "fsync failed: " + why);
  return ok_status();
}

bool valid_dir_name(const std::string& d) {
  if (d.rfind(kDirPrefix, 0) != 0 || d.size() == std::strlen(kDirPrefix)) return false;
  return std::all_of(d.begin() + static_cast<long>(std::strlen(kDirPrefix)), d.end(),
                     [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

// A name under `folder` that no entry has: step-<k>, or step-<k>.<i> (deterministic).
std::string fresh_dir_name(const std::string& folder, int64_t step) {
  char base[32];
  std::snprintf(base, sizeof base, "%s%08lld", kDirPrefix, static_cast<long long>(step));
  std::error_code ec;
  std::string name = base;
  for (int i = 1; fs::exists(fs::path(folder) / name, ec); ++i) name = std::string(base) + "." + std::to_string(i);
  return name;
}

// Rank 0, once every rank's file is on disk: the index to a temporary name, fsync, one rename.
// `renamed` tells whether the new index is in place (then the folder it names must stay).
Status publish(const std::string& folder, const CheckpointIndex& index, const SaveFault& fault, bool& renamed) {
  const std::string dir = (fs::path(folder) / index.dir).string();
  if (auto st = fsync_path(dir, O_RDONLY | O_DIRECTORY); !st) return st;
  maybe_die(fault, 0, "agreed");
  const std::string path = index_path(folder), tmp = path + ".tmp";
  const std::string text = index_to_json(index).dump(2) + "\n";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return make_error("--save", tmp + ": cannot be created: " + errno_text());
  const SaveFault none;
  HashedWriter w(fd, none, 0);
  Status st = w.put(text.data(), static_cast<int64_t>(text.size()), false);
  const bool synced = st && ::fsync(fd) == 0;
  ::close(fd);
  if (!st || !synced) {
    ::unlink(tmp.c_str());
    return make_error("--save", tmp + ": write failed: " + (st ? errno_text() : st.error().message));
  }
  maybe_die(fault, 0, "index-written");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    return make_error("--save", path + ": rename failed: " + why);
  }
  renamed = true;
  maybe_die(fault, 0, "published");
  return fsync_path(folder, O_RDONLY | O_DIRECTORY);
}

// Rank 0, after publishing: every step-* folder the index does not name is the previous
// checkpoint or what a save that died left; a failure to remove one loses nothing.
void remove_unpublished(const std::string& folder, const std::string& keep) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    const std::string name = e.path().filename().string();
    if (name != keep && valid_dir_name(name)) fs::remove_all(e.path(), ec);
  }
}

// Rank 0, before a save: what saves that died left (folders no index names, a temporary index)
// goes, so crashes do not pile up checkpoints; the published one stays. An index that cannot be
// read leaves everything as it is.
void remove_debris(const std::string& folder) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return;
  std::string keep;
  if (fs::exists(index_path(folder), ec)) {
    auto j = read_json_file(index_path(folder));
    if (!j) return;
    auto index = index_from_json(*j, index_path(folder));
    if (!index) return;
    keep = index->dir;
  }
  fs::remove(index_path(folder) + ".tmp", ec);
  remove_unpublished(folder, keep);
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t bytes, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * kFnv1a64Prime;
  return hash;
}

uint64_t plan_fingerprint(const Plan& plan) {
  const nlohmann::json j = plan_to_json(plan);
  nlohmann::json model = j["model"];
  for (const char* text_only : {"source", "published_params", "published_params_precision"}) model.erase(text_only);
  const std::string text = nlohmann::json{{"model", model}, {"train", j["train"]}, {"parallel", j["parallel"]}}.dump();
  return fnv1a64(text.data(), text.size());
}

std::string hex64(uint64_t x) {
  char s[17];
  std::snprintf(s, sizeof s, "%016llx", static_cast<unsigned long long>(x));
  return s;
}

nlohmann::json index_to_json(const CheckpointIndex& index) {
  return {{"format", kFormat},      {"version", kVersion}, {"step", index.step},
          {"world", index.world},   {"dir", index.dir},    {"fingerprint", hex64(index.fingerprint)}};
}

Expected<CheckpointIndex> index_from_json(const nlohmann::json& j, const std::string& where) {
  ObjectReader r(j, where);
  CheckpointIndex index;
  std::string format, fingerprint;
  int64_t version = 0;
  r.string("format", format);
  if (!r.failed() && format != kFormat) r.fail("format", std::string("must be \"") + kFormat + "\" (got \"" + format + "\")");
  r.integer("version", version, 1);
  if (!r.failed() && version != kVersion)
    r.fail("version", "must be " + std::to_string(kVersion) + ", the format this loom reads (got " + std::to_string(version) + ")");
  r.integer("step", index.step, 0);
  r.integer("world", index.world, 1);
  r.string("dir", index.dir);
  if (!r.failed() && !valid_dir_name(index.dir))
    r.fail("dir", "must name a folder step-<digits> beside the index (got \"" + index.dir + "\")");
  r.string("fingerprint", fingerprint);
  if (!r.failed() && (fingerprint.size() != 16 || fingerprint.find_first_not_of("0123456789abcdef") != std::string::npos))
    r.fail("fingerprint", "must be 16 lowercase hex digits (got \"" + fingerprint + "\")");
  r.reject_unknown_keys();
  if (r.failed()) return *r.error();
  index.fingerprint = std::stoull(fingerprint, nullptr, 16);
  return index;
}

std::string index_path(const std::string& folder) { return (fs::path(folder) / kIndexName).string(); }

std::string rank_file(const std::string& dir, int64_t rank) {
  char name[32];
  std::snprintf(name, sizeof name, "rank-%05lld.ckpt", static_cast<long long>(rank));
  return (fs::path(dir) / name).string();
}

int64_t rank_file_bytes(const std::vector<Section>& sections) {
  int64_t n = kHeaderBytes + 8;
  for (const Section& s : sections) n += s.count * static_cast<int64_t>(sizeof(float));
  return n;
}

Status write_rank_file(const std::string& path, const RankHeader& h, const std::vector<Section>& sections,
                       const SaveFault& fault) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return make_error("--save", path + ": cannot be created: " + errno_text());
  int64_t head[kHeaderWords] = {h.step, h.world, h.rank, static_cast<int64_t>(h.fingerprint), 0, 0, 0};
  for (size_t i = 0; i < sections.size() && i < 3; ++i) head[4 + i] = sections[i].count;
  HashedWriter w(fd, fault, h.rank);
  Status st = w.put(kMagic, sizeof kMagic);
  if (st) st = w.put(head, sizeof head);
  for (const Section& s : sections)
    if (st) st = w.put(s.data, s.count * static_cast<int64_t>(sizeof(float)));
  const uint64_t sum = w.hash();
  if (st) st = w.put(&sum, sizeof sum, false);
  if (st && ::fsync(fd) != 0) st = Error{errno_text()};
  ::close(fd);
  if (!st) {
    ::unlink(path.c_str());
    return make_error("--save", path + ": write failed: " + st.error().message);
  }
  return ok_status();
}

Status read_rank_file(const std::string& path, const RankHeader& want, const std::vector<Section>& sections) {
  auto bad = [&](const std::string& rule) { return make_error("--resume", path + ": " + rule); };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bad("cannot be opened (" + errno_text() + "): the checkpoint is incomplete");
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) return bad("cannot be read: " + errno_text());
  const int64_t expected = rank_file_bytes(sections);
  if (sb.st_size != expected)
    return bad("is " + std::to_string(sb.st_size) + " bytes, rank " + std::to_string(want.rank) + " of this plan needs " +
               std::to_string(expected) + " (cut short, or written for another plan)");
  char magic[sizeof kMagic];
  int64_t head[kHeaderWords];
  Status st = read_exact(fd, magic, sizeof magic);
  if (st) st = read_exact(fd, head, sizeof head);
  uint64_t sum = fnv1a64(head, sizeof head, fnv1a64(magic, sizeof magic));
  for (const Section& s : sections) {
    if (!st) break;
    const int64_t n = s.count * static_cast<int64_t>(sizeof(float));
    st = read_exact(fd, s.data, n);
    sum = fnv1a64(s.data, static_cast<size_t>(n), sum);
  }
  uint64_t stored = 0;
  if (st) st = read_exact(fd, &stored, sizeof stored);
  if (!st) return bad("cannot be read: " + st.error().message);
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0) return bad("not a loom checkpoint file (format 2)");
  if (stored != sum)
    return bad("checksum mismatch (stored " + hex64(stored) + ", computed " + hex64(sum) +
               "): the file changed after it was written");
  if (static_cast<uint64_t>(head[3]) != want.fingerprint)
    return bad("written for another plan (fingerprint " + hex64(static_cast<uint64_t>(head[3])) + ", this plan's " +
               hex64(want.fingerprint) + ")");
  const char* names[] = {"step", "world", "rank"};
  const int64_t wants[] = {want.step, want.world, want.rank};
  for (int i = 0; i < 3; ++i)
    if (head[i] != wants[i])
      return bad(std::string("holds ") + names[i] + " " + std::to_string(head[i]) + ", expected " + std::to_string(wants[i]));
  for (size_t i = 0; i < sections.size() && i < 3; ++i)
    if (head[4 + i] != sections[i].count)
      return bad("holds " + std::to_string(head[4 + i]) + " values in section " + std::to_string(i) + ", this rank owns " +
                 std::to_string(sections[i].count));
  return ok_status();
}

Status agree(Comm& comm, const Status& mine, bool& lost) {
  // The lowest failing rank r contributes world - r to a max: 0 means none failed.
  double first = mine ? 0.0 : static_cast<double>(comm.world() - comm.rank());
  if (auto st = comm.all_reduce(world_group(comm), &first, 1, ReduceOp::max); !st) {
    lost = true;
    return st;
  }
  if (first == 0) return ok_status();
  const int root = comm.world() - static_cast<int>(first);
  auto text = share_text(comm, root, mine ? std::string() : mine.error().message, 1024);
  if (!text) {
    lost = true;
    return text.error();
  }
  return Error{*text};
}

Status save_checkpoint(Comm& comm, const std::string& folder, const RankHeader& header,
                       const std::vector<Section>& sections, bool& lost, const SaveFault& fault) {
  const bool root = comm.rank() == 0;
  std::string name;
  Status made = ok_status();
  if (root) {  // a new folder nothing names yet
    std::error_code ec;
    remove_debris(folder);
    fs::create_directories(folder, ec);
    name = fresh_dir_name(folder, header.step);
    if (ec || ::mkdir((fs::path(folder) / name).c_str(), 0755) != 0)
      made = make_error("--save", (fs::path(folder) / name).string() + ": cannot be created: " +
                                      (ec ? ec.message() : errno_text()));
  }
  if (auto st = agree(comm, made, lost); !st) return st;
  auto shared = share_text(comm, 0, name, 64);
  if (!shared) {
    lost = true;
    return shared.error();
  }
  const std::string dir = (fs::path(folder) / *shared).string();
  Status wrote = write_rank_file(rank_file(dir, header.rank), header, sections, fault);
  if (wrote) maybe_die(fault, header.rank, "file-written");
  Status all = agree(comm, wrote, lost);
  Status published = ok_status();
  if (root) {
    std::error_code ec;
    bool renamed = false;
    if (all) {
      published = publish(folder, {header.step, header.world, *shared, header.fingerprint}, fault, renamed);
      if (published) {
        remove_unpublished(folder, *shared);
        maybe_die(fault, 0, "cleaned");
      }
    }
    if (!renamed) fs::remove_all(dir, ec);  // never named by the index
  }
  if (!all) return all;
  return agree(comm, published, lost);
}

Expected<int64_t> load_checkpoint(Comm& comm, const std::string& folder, uint64_t fingerprint,
                                  const std::vector<Section>& sections, bool& lost) {
  const std::string where = index_path(folder);
  CheckpointIndex index;
  Status mine = ok_status();
  if (auto j = read_json_file(where); !j) {
    mine = j.error();
  } else if (auto i = index_from_json(*j, where); !i) {
    mine = i.error();
  } else if (index = *i; index.world != comm.world()) {
    mine = make_error(where, "/world: written by " + std::to_string(index.world) + " ranks, this run has " +
                                 std::to_string(comm.world()) + " (mpirun -np)");
  } else if (index.fingerprint != fingerprint) {
    mine = make_error(where, "/fingerprint: written for another plan (" + hex64(index.fingerprint) + ", this plan's " +
                                 hex64(fingerprint) + "): model, train and parallel must be the same");
  } else {
    const RankHeader want{index.step, index.world, comm.rank(), fingerprint};
    mine = read_rank_file(rank_file((fs::path(folder) / index.dir).string(), comm.rank()), want, sections);
  }
  if (auto st = agree(comm, mine, lost); !st) return st.error();
  return index.step;
}

}  // namespace loom::exec
