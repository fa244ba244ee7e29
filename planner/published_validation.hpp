// `loom validate --published DIR`: the cost model against the figures published multi-GPU
// training runs reported, table by table (tests/data/published/README.md names each source).
// Every row of a table is either predicted, priced by the same CostModel::evaluate that
// `loom predict` runs and compared with the table's own metric, or listed as a row loom cannot
// express, with a stable reason id and a sentence. No row is ever dropped for fitting badly,
// and nothing here is set from these tables: they judge the model, they do not tune it.
//
// Where a table leaves a setting out, the rule that fills it in is stated in TableResult::rules
// (printed with the table) and beside the code that applies it.
//
// Error convention (as sim/validation.hpp): error % = (predicted - published) / published x
// 100, positive when loom predicts more of the metric; MAPE = mean of |error %| over a table's
// compared figures; the worst figure is the one with the largest |error %| (first on ties).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sim/expected.hpp"
#include "sim/model_math.hpp"

namespace loom {

// ---- reading ---------------------------------------------------------------------------

struct CsvRow {
  int64_t line = 0;  // 1-based line in the file
  std::vector<std::string> fields;
};

// A published table: '#' lines (sources, footnotes) and blank lines are skipped; the first
// other line is the header; a later line equal to the header (a second section with the same
// columns) is skipped; every other line is a row with exactly the header's number of fields.
// Fields are split on ','; a '"' anywhere is an error (no table quotes its fields).
struct CsvTable {
  std::string path;
  int64_t header_line = 0;
  std::vector<std::string> header;
  std::vector<CsvRow> rows;
};
Expected<CsvTable> parse_published_csv(const std::string& text, const std::string& path);
Expected<CsvTable> read_published_csv(const std::string& path);

// A published figure as the tables write it: "144", "~0.300" (approximate: a rounded figure
// from a script's comment) or "2560*" (a footnote marker: the table's '#' lines explain it).
struct PublishedNumber {
  double value = 0;
  bool approximate = false;
  bool footnote = false;
};
// Errors read "<path>:<line>: <column>: <rule> (got <text>)".
Expected<PublishedNumber> number_field(const CsvTable& t, const CsvRow& r, const std::string& column);
// A whole number >= min (a footnote marker allowed).
Expected<int64_t> count_field(const CsvTable& t, const CsvRow& r, const std::string& column, int64_t min = 1);
// The text of a column; an error when the header has no such column.
Expected<std::string> text_field(const CsvTable& t, const CsvRow& r, const std::string& column);

// ---- the FLOP convention of the published TFLOP/s ----------------------------------------

// FLOPs per iteration that Narayanan et al. 2021 (arXiv 2104.04473) count when they report
// TFLOP/s per GPU (their eq. 3, Sec. 5.1 and Appendix): GEMMs and the full (non-causal) s^2
// attention, forward + backward + the forward recomputed by activation recomputation:
//   F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h)) = 96 B s l h^2 + 16 B s^2 l h + 6 B s h V.
// Exact in 128 bits. GPT-3 175B, B 1536, s 2048, l 96, h 12288, V 51200: 4510970753323106304
// (4.51e18; at the published 153 TFLOP/s on 384 GPUs a 76.8 s step, 84.8 days for 300B tokens
// against the table's 84).
FlopCount narayanan_flops(int64_t batch, int64_t seq, int64_t layers, int64_t hidden, int64_t vocab);

// ---- results ---------------------------------------------------------------------------

// Why a row cannot be expressed: a stable id (scripts match it) and a sentence (may be reworded).
struct Reason {
  std::string id, sentence;
};
// Every reason id this command can give, in a fixed order.
const std::vector<Reason>& unexpressible_reasons();

// One compared figure: a row's published value of one metric against loom's prediction.
struct PublishedPoint {
  std::string label;         // the row, e.g. "PTD-P 174.6B 384 GPUs"
  int64_t line = 0;          // its line in the file
  std::string metric;        // e.g. "TFLOP/s per GPU", "forward ms", "step s"
  double published = 0, predicted = 0;
  bool approximate = false;  // the published figure is marked "~"
  std::string config;        // what loom priced: "dp 4 tp 8 pp 12 zero 0 mb 1 ..."
  std::string note;          // e.g. that loom's memory model says the configuration does not fit
  // Where the figure comes from a whole step: the event simulator's step for the same
  // configuration against the analytical one, (simulated / analytical - 1) x 100.
  std::optional<double> sim_vs_analytical_pct;
  double error_pct() const { return (predicted - published) / published * 100.0; }
};

struct UnexpressedRow {
  std::string label;
  int64_t line = 0;
  std::vector<std::string> reasons;  // reason ids, each in unexpressible_reasons()
  std::string detail;                // row-specific words, e.g. the model name loom lacks
};

struct TableResult {
  std::string id;                  // the file's two-digit prefix: "02"
  std::string path;
  std::string title;
  std::string metric;              // what is compared, in the table's own convention
  std::vector<std::string> rules;  // how a row becomes a configuration where the table is silent
  std::vector<PublishedPoint> points;
  std::vector<UnexpressedRow> unexpressed;
  double mape_pct = 0;             // over points; 0 when none
  size_t worst = 0;                // index into points of the largest |error %|
};

// The tables loom validates against, by the two-digit prefix of their file name.
const std::vector<std::string>& published_table_ids();

// One table, by its id (02, 06, 09, 10, 11); an unknown id is an error.
Expected<TableResult> validate_published_table(const CsvTable& t, const std::string& id);

// Every table of DIR whose file name starts with a known id and "_" and ends in ".csv",
// sorted by id; DIR must hold at least one. Other files are left alone (the NCCL tables 13-15
// are compared by tests/test_published_collectives.cpp).
Expected<std::vector<TableResult>> validate_published(const std::string& dir);

// {"schema_version": 1, "error_convention", "tables": [{"table", "file", "title", "metric",
//  "rules", "compared", "rows": [...], "mape_pct", "worst", "unexpressible": [...]}],
//  "reasons": {id: sentence}}; mape_pct and worst are null for a table with no row compared.
nlohmann::json published_json(const std::vector<TableResult>& tables);

}  // namespace loom
