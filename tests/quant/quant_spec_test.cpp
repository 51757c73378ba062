// QuantSpec: defaults, ranges, validation, names.
#include "calq/quant/quant_spec.h"

#include <gtest/gtest.h>

#include "quant/test_util.h"

namespace calq {
namespace {

using test::throws_with;

TEST(QuantSpec, Defaults) {
  const QuantSpec spec;
  EXPECT_EQ(spec.dtype(), QuantDtype::qint8);
  EXPECT_EQ(spec.quant_min(), -128);
  EXPECT_EQ(spec.quant_max(), 127);
  EXPECT_FALSE(spec.per_channel());
  EXPECT_EQ(spec.ch_axis(), 0);
  EXPECT_EQ(spec.rounding(), Rounding::half_to_even);
  EXPECT_FALSE(spec.power_of_two());
  EXPECT_TRUE(spec.symmetric());
  EXPECT_NO_THROW(spec.validate());
  EXPECT_EQ(spec.str(), "qint8[-128,127] per_tensor symmetric half_to_even");
}

TEST(QuantSpec, DtypeRanges) {
  EXPECT_EQ(QuantSpec(QuantDtype::qint4).quant_min(), -8);
  EXPECT_EQ(QuantSpec(QuantDtype::qint4).quant_max(), 7);
  EXPECT_EQ(QuantSpec(QuantDtype::qint16).quant_min(), -32768);
  EXPECT_EQ(QuantSpec(QuantDtype::qint16).quant_max(), 32767);
  // Changing the dtype later changes the default range.
  EXPECT_EQ(QuantSpec().dtype(QuantDtype::qint4).quant_max(), 7);
}

TEST(QuantSpec, RangeOverride) {
  QuantSpec spec = QuantSpec().quant_range(-127, 127);
  EXPECT_EQ(spec.quant_min(), -127);
  EXPECT_NO_THROW(spec.validate());
  EXPECT_NE(spec, QuantSpec());
  spec.default_quant_range();
  EXPECT_EQ(spec.quant_min(), -128);
  EXPECT_EQ(spec, QuantSpec());
  EXPECT_TRUE(throws_with([] { QuantSpec().quant_range(-200, 127).validate(); },
                          "must lie inside the qint8 range [-128, 127]"));
  EXPECT_TRUE(throws_with([] { QuantSpec(QuantDtype::qint4).quant_range(-8, 8).validate(); },
                          "qint4 range [-8, 7]"));
  EXPECT_TRUE(throws_with([] { QuantSpec().quant_range(3, 3).validate(); },
                          "quant_min (3) must be less than quant_max (3)"));
}

TEST(QuantSpec, Names) {
  for (auto d : {QuantDtype::qint4, QuantDtype::qint8, QuantDtype::qint16}) {
    EXPECT_EQ(quant_dtype_from_string(to_string(d)), d);
  }
  for (auto r : {Rounding::half_to_even, Rounding::half_up}) {
    EXPECT_EQ(rounding_from_string(to_string(r)), r);
  }
  EXPECT_TRUE(throws_with([] { quant_dtype_from_string("int8"); },
                          "unknown quantization dtype 'int8'; valid names: qint4, qint8, qint16"));
  EXPECT_TRUE(throws_with([] { rounding_from_string("nearest"); },
                          "unknown rounding 'nearest'; valid names: half_to_even, half_up"));
}

TEST(QuantSpec, StrAndEquality) {
  const QuantSpec spec = QuantSpec(QuantDtype::qint4)
                             .per_channel(true)
                             .ch_axis(-1)
                             .rounding(Rounding::half_up)
                             .power_of_two(true)
                             .symmetric(false);
  EXPECT_EQ(spec.str(), "qint4[-8,7] per_channel(axis=-1) affine half_up power_of_two");
  QuantSpec copy = spec;
  EXPECT_EQ(copy, spec);
  copy.ch_axis(0);
  EXPECT_NE(copy, spec);
}

}  // namespace
}  // namespace calq
