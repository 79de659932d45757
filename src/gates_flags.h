/* The gate loops take two flags, peephole or not and a previous cell state or not. Their
 * bodies are always-inline functions with the flags as trailing int parameters; this
 * macro calls one with both flags as constants, so the compiler specialises a branch-free
 * loop for each of the four combinations. */
#ifndef CLSTM_GATES_FLAGS_H
#define CLSTM_GATES_FLAGS_H

#define CLSTM_WITH_GATE_FLAGS(body, peephole, c_prev, ...)                                  \
    do {                                                                                    \
        if (peephole) {                                                                     \
            if (c_prev)                                                                     \
                body(__VA_ARGS__, 1, 1);                                                    \
            else                                                                            \
                body(__VA_ARGS__, 1, 0);                                                    \
        } else {                                                                            \
            if (c_prev)                                                                     \
                body(__VA_ARGS__, 0, 1);                                                    \
            else                                                                            \
                body(__VA_ARGS__, 0, 0);                                                    \
        }                                                                                   \
    } while (0)

#endif
