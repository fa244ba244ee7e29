// Group bandwidth comes from the links a ring crosses, shared by the groups crossing them.
#include <catch2/catch.hpp>

#include "sim/cost_model.hpp"
#include "sim/validate.hpp"
#include "sim/zoo.hpp"
#include "sim_fixtures.hpp"

using namespace loom;

using test::sized;  // sim_fixtures.hpp: a zoo cluster sized to its GPUs

TEST_CASE("dgx-a100: tp inside a node, dp across nodes sharing the NICs") {
  const ClusterSpec c = sized("dgx-a100", 16);
  Topology topo(c);
  const double intra = c.intra_node.busbw_bytes_per_s;
  const double node_nics = c.inter_node.busbw_bytes_per_s * c.inter_node.nics_per_node;
  {
    auto g = RankGrid::make(8, 2, 1, "tp-dp-pp");
    auto l = group_links(topo, *g);
    CHECK(l.tp.busbw_bytes_per_s == intra);
    CHECK(l.tp.nodes_spanned == 1);
    // 8 DP rings of 2 leave each node through its NICs: each gets 1/8.
    CHECK(l.dp.busbw_bytes_per_s == Approx(std::min(intra, node_nics / 8)));
    CHECK(l.dp.nodes_spanned == 2);
  }
  {
    auto g = RankGrid::make(1, 16, 1, "tp-dp-pp");  // one ring over both nodes: all NICs
    auto l = group_links(topo, *g);
    CHECK(l.dp.busbw_bytes_per_s == Approx(std::min(intra, node_nics)));
  }
  {
    auto g = RankGrid::make(8, 2, 1, "dp-tp-pp");  // tp strided across nodes: tp crosses the NICs
    auto l = group_links(topo, *g);
    CHECK(l.tp.nodes_spanned == 2);
    CHECK(l.tp.busbw_bytes_per_s < intra);
  }
}

TEST_CASE("NVIDIA's measured 192 GB/s all-reduce across DGX A100 nodes (nccl#812)") {
  // 15_nccl_maintainer_expected_bw.csv: DGX A100 + 8x HDR, inter-node all-reduce busbw 192 GB/s.
  const ClusterSpec c = sized("dgx-a100", 16);
  Topology topo(c);
  auto g = RankGrid::make(1, 16, 1, "tp-dp-pp");
  auto l = group_links(topo, *g);
  CHECK(l.dp.busbw_bytes_per_s == Approx(192e9).epsilon(0.01));
}

TEST_CASE("single GPU: no groups, no communication") {
  const ClusterSpec c = sized("h100-sxm", 1);
  Topology topo(c);
  auto g = RankGrid::make(1, 1, 1, "tp-dp-pp");
  auto l = group_links(topo, *g);
  CHECK(l.tp.size == 1);
  CHECK(l.dp.size == 1);
  CHECK(l.pp.size == 1);
}
