// Checks KServe v2 inference requests before Triton 2.51's HTTP frontend sees them.
//
// That frontend allocates an input's buffer from its declared "shape" before it
// compares the shape with the data or the model, so one JSON request with a huge
// shape aborts the whole server (std::bad_alloc), and its recursive JSON reader can
// be driven into a stack overflow by deep nesting (docs/security.md). Here every
// inference request's JSON header must parse (njs refuses nesting deeper than 32),
// every input's shape must be at most MAX_DIMS positive integers whose product stays
// within $tce_max_elements, and JSON data must hold exactly that many values of the
// input's datatype. Accepted requests go on unchanged (the original body, binary
// tensors included) through the internal /_triton/ location; refused ones get a 400
// that names the input and the problem, where Triton would answer a 500 without it.
var MAX_DIMS = 8;
var NUMERIC = {BOOL: 'boolean', UINT8: 'number', UINT16: 'number', UINT32: 'number', UINT64: 'number',
               INT8: 'number', INT16: 'number', INT32: 'number', INT64: 'number', FP16: 'number',
               FP32: 'number', BF16: 'number', FP64: 'number', BYTES: 'string'};
// Triton reads NaN and Infinity as numbers (NaN: a missing numeric); so does the check here.
var STRING_OR_NON_FINITE = /"(?:[^"\\]|\\.)*"|-?\bInfinity\b|\bNaN\b/g;
// In a JSON string with escaped backslashes removed: a \uD800-\uDBFF escape not followed by
// a \uDC00-\uDFFF one, or the latter alone. Triton refuses such strings with a 500.
var LONE_SURROGATE = /\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}/;
var ESCAPED_BACKSLASH = /\\\\/g;

function refuse(r, problem) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(400, JSON.stringify({error: 'refused by the gateway: ' + problem}));
}

function shapeProblem(input, name, maxElements) {
    var shape = input.shape;
    if (!Array.isArray(shape) || shape.length === 0 || shape.length > MAX_DIMS) {
        return "input '" + name + "': shape must be a list of 1 to " + MAX_DIMS + ' integers';
    }
    var elements = 1;
    for (var i = 0; i < shape.length; i++) {
        var dim = shape[i];
        if (typeof dim !== 'number' || dim < 1 || Math.floor(dim) !== dim) {
            return "input '" + name + "': shape " + JSON.stringify(shape) + ' holds something other than a '
                + 'positive integer';
        }
        elements *= dim;
        if (elements > maxElements) {
            return "input '" + name + "': shape " + JSON.stringify(shape) + ' has more than ' + maxElements
                + ' elements';
        }
    }
    return null;
}

function elementCount(shape) {
    var count = 1;
    for (var i = 0; i < shape.length; i++) {
        count *= shape[i];
    }
    return count;
}

// Counts the values of nested JSON data, or returns a problem with one of them.
function dataProblem(data, name, kind, expected) {
    var stack = [data], seen = 0;
    while (stack.length) {
        var value = stack.pop();
        if (Array.isArray(value)) {
            for (var i = value.length - 1; i >= 0; i--) {
                stack.push(value[i]);
            }
            continue;
        }
        if (typeof value !== kind) {
            return "input '" + name + "': data holds " + (value === null ? 'null' : typeof value) + ' where a '
                + kind + ' belongs (send missing numbers as NaN in binary, missing text as "")';
        }
        seen += 1;
        if (seen > expected) {
            break;
        }
    }
    return seen === expected ? null : "input '" + name + "': its shape holds " + expected + ' values but data has '
        + (seen > expected ? 'more' : seen);
}

function inputProblem(input, maxElements) {
    if (input === null || typeof input !== 'object' || Array.isArray(input)) {
        return 'every input must be an object';
    }
    if (typeof input.name !== 'string' || input.name === '') {
        return "every input needs a 'name'";
    }
    var name = input.name;
    var kind = NUMERIC[input.datatype];
    if (kind === undefined) {
        return "input '" + name + "': unknown datatype " + JSON.stringify(input.datatype);
    }
    var problem = shapeProblem(input, name, maxElements);
    if (problem) {
        return problem;
    }
    if (input.data !== undefined) {
        return dataProblem(input.data, name, kind, elementCount(input.shape));
    }
    var size = input.parameters && input.parameters.binary_data_size;
    if (typeof size !== 'number' || size < 0 || Math.floor(size) !== size) {
        return "input '" + name + "': needs JSON 'data' or a non-negative integer 'binary_data_size' parameter";
    }
    return null;
}

function parametersProblem(parameters) {
    if (parameters === undefined) {
        return null;
    }
    if (parameters === null || typeof parameters !== 'object' || Array.isArray(parameters)) {
        return "'parameters' must be an object";
    }
    for (var key in parameters) {
        var kind = typeof parameters[key];
        if (kind !== 'string' && kind !== 'number' && kind !== 'boolean') {
            return "parameter '" + key + "' must be a string, a number or a boolean";
        }
    }
    return null;
}

function inferenceHeader(r) {
    var body = r.requestBuffer;
    if (body === undefined) {
        return {problem: 'the request body must fit in the gateway\'s buffer'};
    }
    var length = r.headersIn['Inference-Header-Content-Length'];
    if (length !== undefined) {
        var n = /^[0-9]+$/.test(length) ? Number(length) : NaN;
        if (!(n > 0) || n > body.length) {
            return {problem: 'Inference-Header-Content-Length must be a positive integer within the body size'};
        }
        body = body.slice(0, n);
    }
    var lone = false;
    var checkable = body.toString().replace(STRING_OR_NON_FINITE, function (token) {
        if (token.charAt(0) !== '"') {
            return '0';
        }
        if (token.indexOf('\\u') >= 0 && LONE_SURROGATE.test(token.replace(ESCAPED_BACKSLASH, ''))) {
            lone = true;
        }
        return token;
    });
    if (lone) {
        return {problem: 'a string holds a lone UTF-16 surrogate escape, which is not valid Unicode'};
    }
    try {
        return {header: JSON.parse(checkable)};
    } catch (e) {
        return {problem: 'the request is not valid JSON (or is nested too deeply): ' + e.message};
    }
}

function infer(r) {
    if (r.method !== 'POST') {
        r.return(405);
        return;
    }
    var parsed = inferenceHeader(r);
    if (parsed.problem) {
        refuse(r, parsed.problem);
        return;
    }
    var header = parsed.header;
    var inputs = header !== null && typeof header === 'object' ? header.inputs : undefined;
    if (!Array.isArray(inputs) || inputs.length === 0) {
        refuse(r, "the request needs a non-empty 'inputs' list");
        return;
    }
    var maxElements = Number(r.variables.tce_max_elements);
    var problem = parametersProblem(header.parameters);
    for (var i = 0; i < inputs.length && !problem; i++) {
        problem = inputProblem(inputs[i], maxElements);
    }
    if (problem) {
        refuse(r, problem);
        return;
    }
    r.subrequest('/_triton' + r.uri, {method: 'POST', args: r.variables.args || ''}, function (reply) {
        var pass = ['Content-Type', 'Inference-Header-Content-Length', 'Content-Encoding'];
        for (var j = 0; j < pass.length; j++) {
            if (reply.headersOut[pass[j]] !== undefined) {
                r.headersOut[pass[j]] = reply.headersOut[pass[j]];
            }
        }
        r.return(reply.status, reply.responseBuffer);
    });
}

export default {infer};
