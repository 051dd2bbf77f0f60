// SPDX-License-Identifier: GPL-2.0
/* klpt_t03: a target module of klpt_many (see klpt_target.h). */
#define KLPT_TARGET klpt_t03_answer
#include "klpt_target.h"
MODULE_DESCRIPTION("klptrace lab: klpt_many target 03");
