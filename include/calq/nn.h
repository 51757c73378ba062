#pragma once
// All calq::nn modules.

#include "calq/nn/activation.h"
#include "calq/nn/arithmetic.h"
#include "calq/nn/conv.h"
#include "calq/nn/conv_transpose.h"
#include "calq/nn/float_function.h"
#include "calq/nn/linear.h"
#include "calq/nn/matmul.h"
#include "calq/nn/normalization.h"
#include "calq/nn/pooling.h"
#include "calq/nn/quant_module.h"
#include "calq/nn/reduce.h"
#include "calq/nn/shape.h"
#include "calq/nn/stubs.h"
