-- Headless Neovim (0.7+) as a user of jupyter-ds: tests/editors/test_neovim.py runs
--   nvim --headless --clean -n -c "luafile nvim_lsp_complete.lua"
-- It loads the README's Neovim configuration as written ($JDS_EDITOR_CONFIG), then for
-- each case of $JDS_EDITOR_CASES (JSON: [{file, line, col}], 0-based line, byte column)
-- opens the Python file (the configuration's FileType autocommand starts `jupyter-ds lsp`
-- once and attaches it to each buffer), asks Neovim's LSP client for
-- textDocument/completion at that cursor, lists what <C-x><C-o> would offer there,
-- applies the jupyter-ds item's edit to the buffer and records the buffer. All of it
-- goes to $JDS_EDITOR_OUT as JSON. Every wait is bounded by $JDS_EDITOR_TIMEOUT_MS.
-- Exit status 0 when it got through, 1 with the error in the JSON otherwise.

local result = { steps = {} }

local function env(name)
  local value = os.getenv(name)
  assert(value and value ~= "", "$" .. name .. " is not set")
  return value
end

local function step(name)
  table.insert(result.steps, name)
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- The client the configuration started: it exists (uninitialized) as soon as the
-- FileType autocommand ran, and get_client_by_id forgets it once its process has exited.
local function jupyter_ds_client()
  for id = 1, 32 do
    local client = vim.lsp.get_client_by_id(id)
    if client and client.name == "jupyter-ds" then
      return client
    end
  end
  return nil
end

local function wait_initialized(client, timeout)
  vim.wait(timeout, function()
    return client.initialized or vim.lsp.get_client_by_id(client.id) == nil
  end, 10)
  if not client.initialized then
    if vim.lsp.get_client_by_id(client.id) == nil then
      error("jupyter-ds lsp exited before it initialized (its stderr is in Neovim's lsp.log)")
    end
    error("jupyter-ds lsp did not initialize in " .. timeout .. " ms")
  end
end

-- Complete at one cursor of one file, recording what was seen in `seen` as it goes.
local function complete_case(case, timeout, seen)
  seen.file = case.file
  vim.cmd("edit " .. vim.fn.fnameescape(case.file))
  local bufnr = vim.api.nvim_get_current_buf()
  seen.filetype = vim.bo[bufnr].filetype
  seen.omnifunc = vim.bo[bufnr].omnifunc

  local client = jupyter_ds_client()
  if client == nil then
    error("no live client named jupyter-ds after opening " .. case.file .. " (filetype "
      .. seen.filetype .. "): the configuration started none, or it exited (see lsp.log)")
  end
  if not vim.lsp.buf_is_attached(bufnr, client.id) then
    error("the jupyter-ds client is not attached to " .. case.file)
  end
  if result.lsp_pid == nil then
    result.lsp_pid = client.rpc.pid
    write_file(env("JDS_EDITOR_PID"), tostring(client.rpc.pid))
    step("attached")
    wait_initialized(client, timeout)
    local caps = client.server_capabilities or {}
    result.capabilities = {
      completion = caps.completionProvider ~= nil,
      inline_completion = caps.inlineCompletionProvider ~= nil,
      execute_commands = (caps.executeCommandProvider or {}).commands,
    }
    step("initialized")
  end

  -- The cursor as in insert mode, where it may stand after the last character of the line
  -- (normal mode would pull it back onto that character); LSP counts UTF-16 units.
  vim.api.nvim_win_set_cursor(0, { case.line + 1, 0 })
  local text = vim.api.nvim_buf_get_lines(bufnr, case.line, case.line + 1, true)[1]
  local _, utf16_col = vim.str_utfindex(text, case.col)
  local params = {
    textDocument = vim.lsp.util.make_text_document_params(bufnr),
    position = { line = case.line, character = utf16_col },
  }
  seen.position = params.position
  local responses, err = vim.lsp.buf_request_sync(bufnr, "textDocument/completion", params, timeout)
  if not responses then
    error("textDocument/completion: " .. tostring(err))
  end
  local response = responses[client.id]
  if response == nil then
    error("textDocument/completion: no answer from jupyter-ds")
  end
  local rpc_error = response.err or response.error -- "error" before Neovim 0.10
  if rpc_error then
    error("textDocument/completion failed: " .. vim.inspect(rpc_error))
  end
  local completion = response.result
  local items = {}
  if type(completion) == "table" then
    items = completion.items or completion
  end
  seen.items = vim.deepcopy(items)

  -- What <C-x><C-o> (vim.lsp.omnifunc) offers at this cursor: its own conversion, and
  -- its own filter by the keyword before the cursor.
  local keyword = vim.fn.matchstr(text:sub(1, case.col), "\\k*$")
  seen.omni_words = {}
  for _, entry in ipairs(vim.lsp.util.text_document_completion_list_to_complete_items(completion, keyword)) do
    table.insert(seen.omni_words, entry.word)
  end

  -- Accept the jupyter-ds suggestion the way a completion plugin does: apply its edit.
  for _, item in ipairs(items) do
    if item.detail == "jupyter-ds" then
      local edit = item.textEdit
      if edit and edit.range == nil and edit.insert then -- an InsertReplaceEdit
        edit = { range = edit.insert, newText = edit.newText }
      end
      if edit then
        vim.lsp.util.apply_text_edits({ edit }, bufnr, client.offset_encoding)
        seen.applied = true
      end
      break
    end
  end
  seen.buffer = table.concat(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false), "\n") .. "\n"
end

local function main()
  local timeout = tonumber(env("JDS_EDITOR_TIMEOUT_MS"))
  local cases = vim.fn.json_decode(env("JDS_EDITOR_CASES"))

  vim.cmd("filetype on")
  vim.o.hidden = true -- leave an edited buffer for the next file (Neovim's default)
  dofile(env("JDS_EDITOR_CONFIG"))
  step("config loaded")

  result.cases = {}
  for i, case in ipairs(cases) do
    local seen = {}
    table.insert(result.cases, seen)
    complete_case(case, timeout, seen)
    step("case " .. i)
  end
end

local ok, err = xpcall(main, debug.traceback)
result.ok = ok
if not ok then
  result.error = tostring(err)
end
local out = os.getenv("JDS_EDITOR_OUT")
if out then
  write_file(out, vim.fn.json_encode(result))
end
if ok then
  vim.cmd("qall!")
else
  vim.cmd("cquit")
end
