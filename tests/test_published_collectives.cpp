// loom's collective model (sim/collectives.hpp on the links sim/topology.hpp prices) against
// published NCCL figures (nccl-tests' bus-bandwidth definitions and measured curves). Nothing here is fitted:
// the cluster files' busbw and latency come from the NCCL maintainers' stated figures and
// NCCL's tuning model (their `source` fields); these tests only say how close the result is.
//
// Effective bus bandwidth (nccl-tests doc/PERFORMANCE.md, shared/data/published/13_*.csv):
//   busbw(S) = S * 2(n-1)/n / time(S) for all-reduce over n ranks of an S-byte buffer.
// Error % = (loom - published) / published x 100 (positive: loom is optimistic).
//
// 14_nccl_allreduce_single_node_azure.csv: 8 GPUs of one node, all_reduce_perf -b 8 -e 8G.
// Regimes, from how NCCL behaves and not from loom's errors:
//   small  S <= 1 MiB   latency-bound (NCCL picks its LL/LL128 protocols; time nearly flat)
//   mid    2..256 MiB   protocol switch to Simple, fewer channels, pipeline fill
//   large  S >= 512 MiB where the maintainers say peak busbw is measured ("use 8G messages",
//                       NVIDIA/nccl-tests#149; "256M too small", #212; both in 15_*.csv)
// The MAPE asserted is over the large regime, where the ring bandwidth term loom uses is
// defined; small and mid are printed and bounded so that a regression (or an improvement
// that changes their sign) is seen.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "sim/collectives.hpp"
#include "sim/cost_model.hpp"
#include "sim/spec_json.hpp"
#include "sim/validate.hpp"
#include "sim/validation.hpp"
#include "sim/zoo.hpp"

using namespace loom;

namespace {

const std::string kPublished = std::string(LOOM_PUBLISHED_DIR) + "/";

ClusterSpec sized(const std::string& name, int64_t gpus) {
  auto c = load_cluster(name, "test");
  REQUIRE(c.ok());
  REQUIRE(size_cluster(*c, gpus, "test").ok());
  return *c;
}

// The links of one kind of group for a (tp, dp) grid on `gpus` GPUs of cluster `name`.
GroupLinks links(const std::string& name, int64_t tp, int64_t dp, Dim d) {
  const ClusterSpec c = sized(name, tp * dp);
  Topology topo(c);
  auto g = RankGrid::make(tp, dp, 1, "tp-dp-pp");
  REQUIRE(g.ok());
  return topo.ring(*g, d);
}

double busbw_GBps(double bytes, const GroupLinks& g) {
  const double n = static_cast<double>(g.size);
  return bytes * 2 * (n - 1) / n / collective_time_s(Collective::all_reduce, bytes, g) / 1e9;
}

struct Point {
  std::string label;
  double bytes = 0, a100 = 0, h100 = 0;
};

std::vector<Point> azure_curve() {
  std::ifstream in(kPublished + "14_nccl_allreduce_single_node_azure.csv");
  REQUIRE(in.good());
  std::vector<Point> out;
  std::string line;
  bool header = true;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (header) {  // msg_size_label,msg_bytes,nd_a100_v4_busbw_GBps,nd_h100_v5_busbw_GBps,...
      REQUIRE(line.rfind("msg_size_label,msg_bytes,nd_a100_v4_busbw_GBps,nd_h100_v5_busbw_GBps", 0) == 0);
      header = false;
      continue;
    }
    std::stringstream ss(line);
    std::string f[4];
    for (auto& x : f) std::getline(ss, x, ',');
    out.push_back({f[0], std::stod(f[1]), std::stod(f[2]), std::stod(f[3])});
  }
  REQUIRE(out.size() == 24);  // 1 KiB .. 8 GiB, x2
  return out;
}

std::string fmt_range(double v) { return std::to_string(static_cast<long long>(std::lround(v))); }

enum class Regime { small, mid, large };
Regime regime(double bytes) {
  if (bytes <= 1048576) return Regime::small;
  if (bytes < 536870912) return Regime::mid;
  return Regime::large;
}
const char* regime_name(Regime r) { return r == Regime::small ? "small" : r == Regime::mid ? "mid" : "large"; }

struct CurveErrors {
  std::vector<double> small, mid, large, all;
};

CurveErrors compare_curve(const char* column, const std::string& cluster, double Point::*published) {
  const GroupLinks g = links(cluster, 8, 1, Dim::tp);  // the 8 GPUs of one node
  REQUIRE(g.size == 8);
  CurveErrors e;
  std::printf("\n8-GPU all-reduce busbw, loom (%s: ring busbw %.0f GB/s, %.1f us per ring step) against %s\n",
              cluster.c_str(), g.busbw_bytes_per_s / 1e9, g.latency_s * 1e6, column);
  std::printf("%6s %12s %8s %14s %12s %9s\n", "size", "bytes", "regime", "published GB/s", "loom GB/s", "error %");
  for (const Point& p : azure_curve()) {
    const double loom = busbw_GBps(p.bytes, g);
    const double err = error_pct(loom, p.*published);
    const Regime r = regime(p.bytes);
    std::printf("%6s %12.0f %8s %14.2f %12.2f %+9.1f\n", p.label.c_str(), p.bytes, regime_name(r), p.*published, loom, err);
    (r == Regime::small ? e.small : r == Regime::mid ? e.mid : e.large).push_back(err);
    e.all.push_back(err);
  }
  std::printf("MAPE: large (>= 512 MiB, %zu sizes) %.2f%%, mid %.1f%%, small %.1f%%, whole curve %.1f%%\n",
              e.large.size(), mape_pct(e.large), mape_pct(e.mid), mape_pct(e.small), mape_pct(e.all));
  return e;
}

// A figure of 15_nccl_maintainer_expected_bw.csv, found by its source column (so an edit of
// the file is noticed here).
void require_cited(const std::string& source) {
  std::ifstream in(kPublished + "15_nccl_maintainer_expected_bw.csv");
  std::stringstream ss;
  ss << in.rdbuf();
  INFO(source);
  REQUIRE(ss.str().find(source) != std::string::npos);
}

}  // namespace

TEST_CASE("A100 8-GPU all-reduce busbw against Azure ND A100 v4 (nccl-tests)") {
  const CurveErrors e = compare_curve("ND A100 v4 (NCCL 2.18.5)", "dgx-a100", &Point::a100);
  // Large: the ring term alone. 230 GB/s is the maintainer's ~230 (nccl-tests#149); the
  // measured plateau is 228.1-231.6, so within 1% of it per point and below 2% on average
  // (the bound leaves the rounding of "~230"; today 0.9%).
  CHECK(mape_pct(e.large) <= 2.0);
  for (double x : e.large) CHECK(std::fabs(x) <= 3.0);
  // Small: 14 ring steps x 3.4 us (NCCL's Simple per-step NVLink latency, tuning.cc) = 47.6 us
  // against a measured 42-51 us: every point within 15% (today -6 to -13%).
  for (double x : e.small) CHECK(std::fabs(x) <= 15.0);
  // Mid: loom is optimistic, by up to about +53% at 16 MiB: NCCL runs fewer channels and
  // fills a pipeline of 2 MiB chunks there, which a latency + bandwidth model does not have.
  // This is the regime of tensor-parallel activations and DP buckets; the bound records the
  // gap (fails if it grows past 60%, or turns into a pessimism of more than 15%).
  for (double x : e.mid) {
    CHECK(x <= 60.0);
    CHECK(x >= -15.0);
  }
}

TEST_CASE("H100 8-GPU all-reduce busbw against Azure ND H100 v5 (NVLS)") {
  const CurveErrors e = compare_curve("ND H100 v5 (NCCL 2.18.5, NVLS)", "dgx-h100", &Point::h100);
  // The Azure H100 column is NVLink SHARP all-reduce, which loom prices where a group stays in a
  // node with NVLS (collectives.hpp): the maintainer's ~275 GB/s algbw (~480 busbw, nccl-tests#212) and
  // NCCL's own NVLS latency, 25 us (tuning.cc), both from dgx-h100.json, neither from this table.
  // Large: within 10% per point (today +0.4 to +8.4%), 5% on average (today 2.8%).
  CHECK(mape_pct(e.large) <= 5.0);
  for (double x : e.large) CHECK(std::fabs(x) <= 10.0);
  // Small: 1-8 KiB within 10% (today +2 to +8%: the 25 us latency); from 16 KiB to 1 MiB the
  // measured NVLS time stays near 42 us where NCCL's model has 25 us, so loom is optimistic by
  // up to about +67%: a known gap of NCCL's tuning model, recorded, not fitted (fails past 70%).
  for (double x : e.small) {
    CHECK(x >= -10.0);
    CHECK(x <= 70.0);
  }
  // Mid (2-268 MiB): NVLS ramps to its bandwidth more slowly than a latency + bandwidth model
  // does ("needs large messages", nccl-tests#212): optimistic by +10 to +53% today; bound 60%.
  for (double x : e.mid) {
    CHECK(x >= 0.0);
    CHECK(x <= 60.0);
  }
}

TEST_CASE("maintainers' expected bandwidths through the Topology (15_nccl_maintainer_expected_bw.csv)") {
  const double S = 8589934592.0;  // 8 GiB, the size the maintainers measure peak with
  struct Case {
    const char* what;
    const char* cluster;
    int64_t tp, dp;
    double lo, hi;      // the published figure or range, GB/s
    double bound_pct;   // |error| allowed against the nearest end of the range
    const char* source;
    bool ring_only = false;  // NCCL_ALGO=RING: NVLS left out
  };
  // Intra-node: one 8-GPU ring (NCCL_ALGO=RING), and the all-reduce as NCCL runs it by default
  // there, on NVLink SHARP (the cluster's NVLS figure). Inter-node, one ring over 2 nodes (tp 1, dp 16): it leaves
  // each node once and NCCL spreads its channels over all 8 NICs (rail-optimised). Per NIC:
  // tp 8 inside the nodes, 8 dp rings of 2 across them, sharing the node's 8 NICs: each ring
  // gets one NIC's worth. These figures are where the cluster files' busbw came from, so the
  // check is on the Topology's composition (NIC aggregation and sharing), not on independent
  // accuracy. Bounds: 1% where the figure is the cluster's own coefficient (the latency term
  // at 8 GiB is below 0.5%). H100 over 2 nodes, 8%: the 16-GPU ring also crosses NVLink,
  // which loom prices at the 370 GB/s intra-node ring figure, so it caps the ring at
  // min(370, 8 x 48 = 384) = 370 (366.5 with latency), where NCCL reaches >380 and up to ~396:
  // -3.6% and -7.5%, a known limit of pricing a ring by its slowest link's intra-node figure.
  const Case cases[] = {
      {"A100 intra-node ring", "dgx-a100", 8, 1, 230, 230, 1, "NVIDIA/nccl-tests#149"},
      {"A100 2 nodes, 8 HDR NICs", "dgx-a100", 1, 16, 192, 192, 1, "NVIDIA/nccl#812"},
      {"A100 per HDR NIC", "dgx-a100", 8, 2, 24, 24, 1, "NVIDIA/nccl-tests#119"},
      {"H100 intra-node ring", "dgx-h100", 8, 1, 370, 370, 1, "NVIDIA/nccl-tests#212", true},
      {"H100 intra-node NVLS", "dgx-h100", 8, 1, 480, 480, 1, "NVIDIA/nccl-tests#212"},
      {"H100 intra-node all-reduce", "dgx-h100", 8, 1, 476, 476, 2, "NVIDIA/nccl-tests#290"},
      {"H100 2 nodes, 8 NDR NICs", "dgx-h100", 1, 16, 380, 400, 8, "NVIDIA/nccl-tests#309"},
      {"H100 2 nodes, 8 NDR NICs", "dgx-h100", 1, 16, 396, 396, 8, "NVIDIA/nccl-tests#319"},
      {"H100 per NDR NIC", "dgx-h100", 8, 2, 46, 48, 1, "NVIDIA/nccl-tests#290"},
  };
  std::printf("\nall-reduce busbw at 8 GiB, loom against the maintainers' figures\n");
  std::printf("%-26s %4s %6s %16s %10s %9s  %s\n", "case", "tp", "dp", "published GB/s", "loom GB/s", "error %",
              "source");
  for (const Case& c : cases) {
    require_cited(c.source);
    GroupLinks g = links(c.cluster, c.tp, c.dp, c.dp > 1 ? Dim::dp : Dim::tp);
    if (c.ring_only) g.nvls_algbw_bytes_per_s = 0;
    const double loom = busbw_GBps(S, g);
    // Error against the nearest end of a range (0 inside it).
    const double ref = loom < c.lo ? c.lo : loom > c.hi ? c.hi : loom;
    const double err = error_pct(loom, ref);
    const std::string pub = c.lo == c.hi ? fmt_range(c.lo) : fmt_range(c.lo) + "-" + fmt_range(c.hi);
    std::printf("%-26s %4lld %6lld %16s %10.1f %+9.1f  %s\n", c.what, static_cast<long long>(c.tp),
                static_cast<long long>(c.dp), pub.c_str(), loom, err, c.source);
    INFO(c.what << " " << c.source << ": loom " << loom << " GB/s");
    CHECK(std::fabs(err) <= c.bound_pct);
  }
}

TEST_CASE("NVLink SHARP: read from intra_node, priced for all-reduce inside a node only") {
  // dgx-h100 states it (nvls_algbw_bytes_per_s, nvls_latency_s); dgx-a100 has none (Ampere).
  const GroupLinks h100 = links("dgx-h100", 8, 1, Dim::tp), a100 = links("dgx-a100", 8, 1, Dim::tp);
  CHECK(h100.nvls_algbw_bytes_per_s == 275e9);
  CHECK(h100.nvls_latency_s == 25e-6);
  CHECK(a100.nvls_algbw_bytes_per_s == 0);
  // 1 GiB: NVLS's S / 275e9 + 25 us beats the ring's; all-gather stays on the ring.
  const double S = 1073741824.0;
  CHECK(collective_time_s(Collective::all_reduce, S, h100) == Approx(S / 275e9 + 25e-6).epsilon(1e-12));
  // Two GPUs: the ring moves the same bytes as NVLS, at 370 GB/s: the ring wins.
  const GroupLinks two = links("dgx-h100", 2, 1, Dim::tp);
  CHECK(collective_time_s(Collective::all_reduce, S, two) == Approx(S * 2 / 2 / 370e9 + 2 * 3.4e-6).epsilon(1e-12));
  CHECK(collective_time_s(Collective::all_gather, S, h100) ==
        Approx(S * 7 / 8 / 370e9 + 7 * 3.4e-6).epsilon(1e-12));
  // A group across nodes has no NVLS.
  CHECK(links("dgx-h100", 1, 16, Dim::dp).nvls_algbw_bytes_per_s == 0);
  // Strictly read: both fields or neither, and on intra_node only.
  nlohmann::json c = to_json(sized("dgx-h100", 16));
  REQUIRE(cluster_from_json(c, "test.json").ok());
  nlohmann::json half = c;
  half["intra_node"].erase("nvls_latency_s");
  CHECK_FALSE(cluster_from_json(half, "test.json").ok());
  nlohmann::json inter = c;
  inter["inter_node"]["nvls_algbw_bytes_per_s"] = 1e9;
  inter["inter_node"]["nvls_latency_s"] = 1e-6;
  auto bad = cluster_from_json(inter, "test.json");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("intra_node only") != std::string::npos);
}
